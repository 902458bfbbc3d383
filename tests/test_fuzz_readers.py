"""Property-based fuzzing (hypothesis) of the readers of what users give: image files, config files, vocabulary
text and label maps. Whatever the bytes, each reader returns a well-formed result or raises its own error naming the
input; no other exception escapes. Each property runs a bounded number of examples with a deadline."""

import io
import os
import pickle
import tempfile

import cv2
import numpy as np
import pytest
import yaml
from detectron2.config import get_cfg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import esc_net
from esc_net.config import ConfigFileError, merge_config_file
from esc_net.demo.cli import InputError, parse_vocabulary_text, read_vocabulary_file, write_vocabulary
from esc_net.demo.images import ImageLimits, UnreadableImageError, read_image
from esc_net.utils.label_maps import read_label_map
from esc_net.utils.safe_pickle import load_restricted_pickle
from esc_net_runtime.vocabulary_rules import check_vocabulary

FUZZ = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
LIMITS = ImageLimits(max_side=256, max_pixels=256 * 128)


def _valid_files():
    """Small valid encodings to mutate: every format the demos read, and 8/16-bit label maps."""
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (40, 30))
    files = {ext: cv2.imencode(ext, image)[1].tobytes() for ext in (".png", ".jpg", ".bmp", ".tif", ".webp")}
    files[".progressive.jpg"] = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    labels = rng.integers(0, 5, (30, 40))
    files["labels8.png"] = cv2.imencode(".png", labels.astype(np.uint8))[1].tobytes()
    files["labels16.png"] = cv2.imencode(".png", labels.astype(np.uint16) * 300)[1].tobytes()
    files["labels16.tif"] = cv2.imencode(".tif", labels.astype(np.uint16) * 300)[1].tobytes()
    return files


VALID = _valid_files()


@st.composite
def mutated_files(draw, names):
    """A valid file cut short, with bytes overwritten, inserted, or an end marker appended."""
    data = bytearray(VALID[draw(st.sampled_from(names))])
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "insert", "cut"]))
        if kind == "flip":
            data[position] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[position:]
            if not data:
                break
    if draw(st.booleans()):
        data += b"\xff\xd9"  # a JPEG end-of-image marker, which hides a cut from a look at the file's end
    return bytes(data)


def _write(data: bytes, suffix: str) -> str:
    fd, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


IMAGE_NAMES = [".png", ".jpg", ".bmp", ".tif", ".webp", ".progressive.jpg"]


@FUZZ
@given(data=st.one_of(mutated_files(IMAGE_NAMES), st.binary(max_size=300)))
def test_image_reading_returns_a_bounded_image_or_names_the_file(data):
    path = _write(data, ".img")
    try:
        image = read_image(path, LIMITS, name="upload.bin")
    except UnreadableImageError as e:
        assert "upload.bin" in str(e) and path not in str(e)
    else:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert max(image.shape[:2]) <= LIMITS.max_side and image.shape[0] * image.shape[1] <= LIMITS.max_pixels
    finally:
        os.remove(path)


LABEL_NAMES = ["labels8.png", "labels16.png", "labels16.tif", ".png"]


@FUZZ
@given(data=st.one_of(mutated_files(LABEL_NAMES), st.binary(max_size=300)))
def test_label_map_reading_returns_integer_maps_or_names_the_file(data):
    path = _write(data, ".png")
    try:
        labels = read_label_map(path)
    except (OSError, ValueError) as e:
        assert path in str(e)
    else:
        assert labels.ndim == 2 and np.issubdtype(labels.dtype, np.integer)
    finally:
        os.remove(path)


# Values a config holds, and the tags YAML would turn into Python objects.
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=False), st.text(max_size=12)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_KEYS = st.sampled_from(
    [
        "SEED",
        "OUTPUT_DIR",
        "MODEL.DEVICE",
        "MODEL.ESC_NET.NUM_POINTS",
        "MODEL.ESC_NET.CLIP_MODEL_CFG",
        "INPUT.MIN_SIZE_TRAIN",
        "DATASETS.TEST",
        "VIS_PERIOD",
        "_BASE_",
        "NO_SUCH_KEY",
    ]
)
_TAGS = [
    "!!python/object/apply:os.system",
    "!!python/name:os.system",
    "!!python/object/new:builtins.bytes",
    "!!python/tuple",
    "!!binary",
    "!!set",
]


def _nest(key: str, value):
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


@FUZZ
@given(key=_KEYS, value=_VALUES, tag=st.none() | st.sampled_from(_TAGS), garbage=st.text(max_size=20))
def test_config_loading_merges_or_names_the_file_and_never_builds_objects(key, value, tag, garbage):
    text = yaml.safe_dump(_nest(key, value))
    if tag:
        text += f"SEED: {tag} [1]\n"
    text += garbage
    path = _write(text.encode("utf-8", "surrogatepass"), ".yaml")
    cfg = get_cfg()
    esc_net.add_esc_net_config(cfg)
    try:
        merge_config_file(cfg, path)
    except ConfigFileError as e:
        assert path in str(e)
    else:
        assert not tag or tag in ("!!binary", "!!set"), "a Python tag was accepted"
    finally:
        os.remove(path)


@FUZZ
@given(text=st.lists(st.text(max_size=20), max_size=4))
def test_vocabulary_text_gives_checked_one_line_names_or_a_clear_error(text):
    try:
        names = check_vocabulary(parse_vocabulary_text(text))
    except (ValueError, TypeError) as e:
        assert str(e)
        return
    assert names and all(n == n.strip() and ";" not in n and n.split(",") for n in names)
    keys = [tuple(" ".join(s.lower().split()) for s in n.split(",") if s.strip()) for n in names]
    assert len(set(keys)) == len(keys)
    # vocabulary.txt holds one line per class, and a vocabulary file of those names reads back the same names
    with tempfile.TemporaryDirectory() as folder:
        write_vocabulary(os.path.join(folder, "vocabulary.txt"), names)
        with open(os.path.join(folder, "vocabulary.txt"), encoding="utf-8") as f:
            lines = f.read().split("\n")
        assert lines[-1] == "" and [line.split("\t", 1) for line in lines[:-1]] == [
            [str(i), n] for i, n in enumerate(names)
        ]
        with open(os.path.join(folder, "names.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(names))
        try:
            assert read_vocabulary_file(os.path.join(folder, "names.txt")) == [
                n for n in names if not n.startswith("#")
            ]
        except InputError:
            assert all(n.startswith("#") for n in names)


@FUZZ
@given(
    data=st.binary(max_size=200)
    | st.builds(lambda d, cut: d[:cut], st.just(pickle.dumps({"a": [1, 2.5]}, 2)), st.integers(0, 30))
)
def test_the_restricted_unpickler_refuses_damaged_pickles_with_its_own_errors(data):
    try:
        load_restricted_pickle(io.BytesIO(data), encoding="latin1")
    except (pickle.UnpicklingError, EOFError):
        pass


@pytest.mark.parametrize("name", sorted(VALID))
def test_the_fuzzed_files_are_valid_before_mutation(name, tmp_path):
    """The seeds of the fuzzing are read whole, so a mutation is what makes a file unreadable."""
    path = _write(VALID[name], ".bin")
    try:
        if name.startswith("labels"):
            assert read_label_map(path).shape == (30, 40)
        else:
            assert read_image(path, LIMITS).shape == (30, 40, 3)
    finally:
        os.remove(path)
