"""Vocabulary limits: a class name's characters and a vocabulary's names are bounded before any tokenisation, by
the rules (esc_net_runtime.vocabulary_rules) and by both demos, with a message naming the limit and the option that
raises it."""

import cv2
import numpy as np
import pytest

from conftest import TINY_CONFIG
from esc_net.demo import cli as demo
from esc_net_runtime.vocabulary_rules import VocabularyLimitError, VocabularyLimits, check_vocabulary

NO_DATASETS = ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]
# A name that tokenises quickly (words) but is far longer than any class name: old code accepted it.
LONG_NAME = "very " * 2000 + "long cat"


def test_the_defaults_accept_the_largest_benchmark_vocabularies():
    from esc_net.data.class_names import load_class_names

    limits = VocabularyLimits()
    for key in ("ade20k_847", "pascal_context_459", "coco_stuff_171"):
        names = load_class_names(key)
        assert check_vocabulary(names, limits) == names
    # at the limits exactly: accepted
    names = [f"{i:04d}" + "x" * (limits.max_name_chars - 4) for i in range(limits.max_classes)]
    assert check_vocabulary(names, limits) == names


def test_a_long_name_is_refused_without_repeating_it():
    limits = VocabularyLimits(max_name_chars=20, max_classes=5)
    with pytest.raises(VocabularyLimitError) as error:
        check_vocabulary(["cat", "x" * 100_000], limits)
    message = str(error.value)
    assert "class name 1 ('xxxxxxxx" in message and "has 100000 characters; at most 20 are accepted" in message
    assert len(message) < 200 and error.value.limit == "max_name_chars"
    # spaces around a name do not count (they are stripped)
    assert check_vocabulary(["  " + "x" * 20 + "  "], limits) == ["x" * 20]


def test_too_many_names_are_refused():
    limits = VocabularyLimits(max_name_chars=20, max_classes=5)
    with pytest.raises(VocabularyLimitError, match="the vocabulary has 6 class names; at most 5 are accepted") as e:
        check_vocabulary([f"class {i}" for i in range(6)], limits)
    assert e.value.limit == "max_classes"


def test_without_limits_only_the_rules_of_text_apply():
    """Datasets' vocabularies (training, evaluation) are not bounded: the limits are the demos'."""
    assert check_vocabulary([LONG_NAME]) == [LONG_NAME.strip()]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "a.png"
    assert cv2.imwrite(str(path), np.zeros((32, 32, 3), np.uint8))
    return path


def test_the_demo_refuses_a_long_name_or_vocabulary_naming_the_option(image, tmp_path):
    out = tmp_path / "out"

    def argv(*args):
        return ["--config-file", TINY_CONFIG, "--input", str(image), "--output", str(out), *map(str, args)] + [
            "--opts",
            *NO_DATASETS,
        ]

    def error(*args):
        with pytest.raises(SystemExit) as info:
            demo.segment_images(argv(*args))
        assert isinstance(info.value.code, str)
        return info.value.code

    message = error("--vocabulary", f"dog; {LONG_NAME}")
    assert message.startswith("esc-net-demo: error: class name 1 ('very very")
    assert f"has {len(LONG_NAME)} characters; at most 300 are accepted (raise it with --max-name-chars)" in message
    message = error("--vocabulary", "; ".join(f"class {i}" for i in range(12)), "--max-classes", 10)
    assert message.endswith("the vocabulary has 12 class names; at most 10 are accepted (raise it with --max-classes)")
    names = tmp_path / "names.txt"
    names.write_text(f"dog\n{LONG_NAME}\n")
    assert "(raise it with --max-name-chars)" in error("--vocabulary-file", names)
    assert not out.exists()  # refused before anything was written
    # raised, the same name is accepted (and the model warns that its end is cut off)
    with pytest.warns(UserWarning, match="cut off"):
        demo.segment_images(argv("--vocabulary", f"dog; {LONG_NAME}", "--max-name-chars", len(LONG_NAME)))
    assert (out / "a_overlay.png").is_file()
