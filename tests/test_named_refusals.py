"""Every refusal names what was refused: crafted .pkl files, CLIP weights of an unread format, class names that
would break vocabulary.txt, a vocabulary that is not a list."""

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from conftest import TINY_CONFIG, tiny_cfg
from esc_net.data.prepare.cli import main as prepare
from esc_net.demo import cli as demo
from esc_net.predictor import ESCNetPredictor
from esc_net.utils.checkpoint import UnreadableCheckpointError

# Pickles that name only admitted callables but give them arguments they refuse.
CRAFTED_PICKLES = {
    # _codecs.encode("x", "no-such-encoding"): LookupError
    "unknown_encoding": b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x10\x00\x00\x00no-such-encoding\x86R.",
    # state set on the numpy.dtype class itself: TypeError
    "state_on_a_type": b"\x80\x02cnumpy\ndtype\n}X\x01\x00\x00\x00aK\x01sb.",
}


@pytest.mark.parametrize("kind", sorted(CRAFTED_PICKLES))
def test_crafted_pkl_weights_are_refused_naming_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.pkl"
    path.write_bytes(CRAFTED_PICKLES[kind])
    with pytest.raises(UnreadableCheckpointError, match=f"cannot read the weights file {path} .*malformed pickle"):
        ESCNetPredictor(tiny_cfg("MODEL.WEIGHTS", str(path)))


@pytest.mark.parametrize("kind", sorted(CRAFTED_PICKLES))
def test_a_crafted_ade20k_index_is_refused_naming_the_file(tmp_path, kind):
    index = tmp_path / "ADE20K_2021_17_01" / "index_ade20k.pkl"
    index.parent.mkdir()
    index.write_bytes(CRAFTED_PICKLES[kind])
    with pytest.raises(SystemExit) as info:
        prepare(["ade20k_847", "--root", str(tmp_path)])
    assert f"{index} is not the ADE20K index" in str(info.value) and "malformed pickle" in str(info.value)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_clip_weights_in_numpy_files_are_refused_naming_the_file(tmp_path, suffix):
    path = str(tmp_path / f"clip{suffix}")
    (np.save if suffix == ".npy" else np.savez)(path, np.zeros(3))
    with pytest.raises(ValueError, match=f"CLIP weights file {path}: expected an open_clip state dict saved as .bin"):
        build_model(tiny_cfg("MODEL.ESC_NET.CLIP_PRETRAINED", path))


@pytest.fixture(scope="module")
def predictor():
    return ESCNetPredictor(tiny_cfg())


@pytest.mark.parametrize("names", [None, 3, object()])
def test_a_vocabulary_that_is_not_a_list_is_named(predictor, names):
    with pytest.raises(TypeError, match=f"a vocabulary is a list of class names, got {type(names).__name__}"):
        predictor.set_vocabulary(names)


@pytest.mark.parametrize("name", ["cat\ndog", "cat\tdog", "cat\rdog", "cat\x00"])
def test_names_holding_a_line_break_or_control_character_are_refused(predictor, name):
    with pytest.raises(ValueError, match="must be one line of text.*1: " + repr(name).replace("\\", "\\\\")):
        predictor.set_vocabulary(["sky", name])


def test_the_demo_writes_no_vocabulary_file_for_a_name_with_a_line_break(tmp_path):
    image = tmp_path / "image.png"
    image.write_bytes(b"")
    with pytest.raises(SystemExit) as info:
        demo.segment_images(
            [
                "--config-file",
                TINY_CONFIG,
                "--input",
                str(image),
                "--output",
                str(tmp_path / "out"),
                "--vocabulary",
                "sky; cat\ndog",
                "--opts",
                "DATASETS.TRAIN",
                "()",
                "DATASETS.TEST",
                "()",
            ]
        )
    assert "must be one line of text" in info.value.code and "'cat\\ndog'" in info.value.code
    assert not (tmp_path / "out").exists()


def test_weights_that_do_load_still_do(tmp_path):
    """The checks above refuse nothing that loads: a plain checkpoint and a two-name vocabulary."""
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(tiny_cfg()), save_dir=str(tmp_path)).save("model")
    loaded = ESCNetPredictor(tiny_cfg("MODEL.WEIGHTS", str(tmp_path / "model.pth")))
    loaded.set_vocabulary(["sky", "sofa, couch"])
    assert loaded.vocabulary == ["sky", "sofa, couch"]
