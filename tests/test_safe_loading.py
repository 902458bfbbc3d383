"""No code runs from a file ESC-Net loads, and a damaged weights file is named in the error.

Every loading path gets a file whose unpickling would create a marker file (``os.system("touch ...")``): the
load must fail with an error naming the file and the marker must never appear.
"""

import logging
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from conftest import REPO_ROOT, tiny_cfg
from esc_net import engine
from esc_net.data.prepare.cli import prepare
from esc_net.predictor import ESCNetPredictor
from esc_net.utils.checkpoint import ESCNetCheckpointer, UnreadableCheckpointError
from esc_net.utils.safe_pickle import ForbiddenPickleError, load_restricted_pickle


class _RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious_torch_file(path, marker):
    torch.save({"model": {"payload": _RunsCode(marker)}}, str(path))
    return str(path)


def _malicious_pickle(path, marker, protocol=2):
    with open(path, "wb") as f:
        pickle.dump({"model": {"payload": _RunsCode(marker)}, "__author__": "attacker"}, f, protocol=protocol)
    return str(path)


def test_the_payload_works_with_plain_pickle(tmp_path):
    # The files below are real attacks: plain pickle.load runs them.
    marker = tmp_path / "ran"
    with open(_malicious_pickle(tmp_path / "evil.pkl", marker), "rb") as f:
        pickle.load(f)
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pkl", ".pth", ".pyth"])
def test_model_weights_that_run_code_are_refused(tmp_path, marker, suffix):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pkl":
        _malicious_pickle(path, marker)
    else:
        _malicious_torch_file(path, marker)
    # the predictor and the demo
    with pytest.raises(UnreadableCheckpointError, match="refusing to load") as info:
        ESCNetPredictor(tiny_cfg("MODEL.WEIGHTS", str(path)))
    assert str(path) in str(info.value) and "system" in str(info.value)
    # train_net.py --eval-only
    args = engine.default_argument_parser().parse_args(
        [
            "--config-file",
            os.path.join(REPO_ROOT, "configs", "esc_net_tiny.yaml"),
            "--eval-only",
            "DATASETS.TRAIN",
            "()",
            "DATASETS.TEST",
            "()",
            "OUTPUT_DIR",
            str(tmp_path / "out"),
            "MODEL.WEIGHTS",
            str(path),
        ]
    )
    with pytest.raises(UnreadableCheckpointError, match="refusing to load"):
        engine.run(args)


def test_resume_skips_a_checkpoint_that_runs_code(tmp_path, marker):
    model = torch.nn.Linear(2, 2)
    checkpointer = ESCNetCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    _malicious_torch_file(tmp_path / "model_0000003.pth", marker)
    checkpointer.tag_last_checkpoint("model_0000003.pth")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("esc_net.utils.checkpoint").addHandler(handler)
    try:
        checkpointer.resume_or_load("", resume=True)
    finally:
        logging.getLogger("esc_net.utils.checkpoint").removeHandler(handler)
    assert checkpointer.resumed_from == str(tmp_path / "model_0000001.pth")
    assert any("model_0000003.pth" in r.getMessage() and "run code" in r.getMessage() for r in records)


def test_sam_and_clip_files_that_run_code_are_refused(tmp_path, marker):
    sam = _malicious_torch_file(tmp_path / "sam_vit_b_01ec64.pth", marker)
    with pytest.raises(UnreadableCheckpointError, match="refusing to load") as info:
        build_model(tiny_cfg("MODEL.ESC_NET.SAM_CHECKPOINT", sam))
    assert sam in str(info.value)
    clip = _malicious_torch_file(tmp_path / "clip.pt", marker)
    with pytest.raises(UnreadableCheckpointError, match="refusing to load") as info:
        build_model(tiny_cfg("MODEL.ESC_NET.CLIP_PRETRAINED", clip))
    assert clip in str(info.value)


def test_ade20k_index_that_runs_code_is_refused(tmp_path, marker):
    index = tmp_path / "ADE20K_2021_17_01" / "index_ade20k.pkl"
    index.parent.mkdir()
    with open(index, "wb") as f:
        pickle.dump({"filename": [], "folder": [], "objectnames": _RunsCode(marker)}, f)
    with pytest.raises(ValueError, match="index_ade20k.pkl") as info:
        prepare(["ade20k_847", "--root", str(tmp_path)])
    assert "os.system" in str(info.value) or "posix.system" in str(info.value)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_admits_what_weight_files_and_indexes_hold(protocol):
    import io
    from collections import OrderedDict

    data = {
        "arrays": [np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros(3, dtype=bool), np.array(["a", "bc"])],
        "objects": np.array(["x", None], dtype=object),
        "scalars": (np.float64(1.5), np.int64(-3), 7, 2.5, True, None),
        "text": ("name", b"bytes"),
        "ordered": OrderedDict(a=1),
    }
    loaded = load_restricted_pickle(io.BytesIO(pickle.dumps(data, protocol=protocol)))
    np.testing.assert_array_equal(loaded["arrays"][0], data["arrays"][0])
    assert loaded["arrays"][0].dtype == np.float32 and loaded["arrays"][2].tolist() == ["a", "bc"]
    assert loaded["objects"].tolist() == ["x", None]
    assert loaded["scalars"] == data["scalars"] and loaded["text"] == data["text"]
    assert loaded["ordered"] == OrderedDict(a=1)
    with pytest.raises(ForbiddenPickleError, match="builtins.eval"):
        load_restricted_pickle(io.BytesIO(pickle.dumps(eval)))


def test_detectron2_pkl_weights_load_into_the_model(tmp_path):
    """A model-zoo style .pkl (numpy arrays, pickled at protocol 2) loads through the restricted unpickler."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    path = tmp_path / "model.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "test"}, f, protocol=2)
    torch.manual_seed(1)
    predictor = ESCNetPredictor(tiny_cfg("MODEL.WEIGHTS", str(path)))
    for name, value in predictor.model.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[name])


def test_empty_and_truncated_weight_files_are_named(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    ESCNetCheckpointer(model, str(tmp_path)).save("model")
    good = (tmp_path / "model.pth").read_bytes()
    empty, truncated = tmp_path / "empty.pth", tmp_path / "truncated.pth"
    empty.write_bytes(b"")
    truncated.write_bytes(good[: len(good) // 2])
    cases = [
        (lambda path: ESCNetPredictor(tiny_cfg("MODEL.WEIGHTS", path)), empty, "empty \\(0 bytes\\)"),
        (lambda path: ESCNetPredictor(tiny_cfg("MODEL.WEIGHTS", path)), truncated, "truncated"),
        (lambda path: build_model(tiny_cfg("MODEL.ESC_NET.SAM_CHECKPOINT", path)), empty, "empty"),
        (lambda path: build_model(tiny_cfg("MODEL.ESC_NET.CLIP_PRETRAINED", path)), truncated, "truncated"),
    ]
    for load, path, message in cases:
        with pytest.raises(UnreadableCheckpointError, match=message) as info:
            load(str(path))
        assert str(path) in str(info.value)
