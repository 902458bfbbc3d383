"""Checkpoints survive kills: atomic writes, resuming past damaged checkpoints and pointers, and a real training
killed with SIGKILL at several moments (during a periodic save mid-training, during the final save)."""

import logging
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import RANDOM_BACKBONES, REPO_ROOT
from esc_net.utils.checkpoint import ESCNetCheckpointer, read_checkpoint_file

pytestmark = pytest.mark.slow  # kills and resumes training processes


class _Records(logging.Handler):
    """Collects the checkpointer's warnings (the esc_net logger may not propagate to pytest's caplog)."""

    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("esc_net.utils.checkpoint").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("esc_net.utils.checkpoint").removeHandler(self)


def _checkpoints(folder):
    """A folder with model_0000001.pth (weight 1) and model_0000002.pth (weight 2, newer, in last_checkpoint)."""
    model = torch.nn.Linear(1, 1, bias=False)
    checkpointer = ESCNetCheckpointer(model, str(folder))
    for value in (1.0, 2.0):
        model.weight.data.fill_(value)
        checkpointer.save(f"model_{int(value):07d}")
    os.utime(folder / "model_0000001.pth", (1, 1))  # clearly older
    model.weight.data.fill_(0.0)
    return model, checkpointer


def _resume(model, checkpointer):
    with _Records() as records:
        checkpointer.resume_or_load("", resume=True)
    return model.weight.item(), records.messages


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_resume_falls_back_past_a_damaged_checkpoint(tmp_path, damage):
    model, checkpointer = _checkpoints(tmp_path)
    latest = tmp_path / "model_0000002.pth"
    latest.write_bytes(b"" if damage == "empty" else latest.read_bytes()[:200])
    weight, messages = _resume(model, checkpointer)
    assert weight == 1.0 and checkpointer.resumed_from == str(tmp_path / "model_0000001.pth")
    assert any(str(latest) in m and ("empty" if damage == "empty" else "truncated") in m for m in messages)


@pytest.mark.parametrize("pointer", ["", "model_0000009.pth"])
def test_resume_with_an_empty_or_stale_pointer_takes_the_newest_checkpoint(tmp_path, pointer):
    model, checkpointer = _checkpoints(tmp_path)
    (tmp_path / "last_checkpoint").write_text(pointer)
    weight, messages = _resume(model, checkpointer)
    assert weight == 2.0
    assert any("last_checkpoint" in m for m in messages)


def test_no_readable_checkpoint_starts_from_model_weights(tmp_path):
    model, checkpointer = _checkpoints(tmp_path)
    for name in ("model_0000001.pth", "model_0000002.pth"):
        (tmp_path / name).write_bytes(b"")
    weight, messages = _resume(model, checkpointer)
    assert weight == 0.0 and checkpointer.resumed_from is None
    assert len(messages) == 2


def test_a_save_that_fails_midway_keeps_the_previous_files(tmp_path, monkeypatch):
    model, checkpointer = _checkpoints(tmp_path)
    before = (tmp_path / "model_0000002.pth").read_bytes()

    def write_half_then_fail(obj, f):
        f.write(before[: len(before) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        checkpointer.save("model_0000002")
    monkeypatch.undo()
    assert (tmp_path / "model_0000002.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth", "model_0000002.pth"]


# ---------------------------------------------------------------------------------------------------------------
# A real training, killed with SIGKILL.

# Runs the engine's command line after arranging one SIGKILL halfway through writing the N-th checkpoint of this run
# ("save:N": torch.save has written half of its bytes), or none ("save:0").
_DRIVER = r"""
import io, os, signal, sys
import torch
from esc_net import engine

n = int(sys.argv[1].split(":")[1])
real_save, calls = torch.save, []
def save_then_die(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) != n:
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer)
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = save_then_die
engine.main(sys.argv[2:])
"""


def _train(tmp_path, kill, opts):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), CUDA_VISIBLE_DEVICES="")
    argv = [
        sys.executable,
        "-c",
        _DRIVER,
        kill,
        "--config-file",
        os.path.join(REPO_ROOT, "configs", "esc_net_tiny_shapes.yaml"),
        "--resume",
        *RANDOM_BACKBONES,
        *opts,
    ]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)


def test_training_killed_at_several_moments_resumes_and_finishes(tmp_path):
    subprocess.run(
        [
            sys.executable,
            os.path.join(REPO_ROOT, "datasets", "generate_synthetic_shapes.py"),
            "--root",
            str(tmp_path / "datasets"),
            "--num-train",
            "4",
            "--num-val",
            "1",
        ],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "out"
    opts = [
        "OUTPUT_DIR",
        str(out),
        "SOLVER.MAX_ITER",
        "6",
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "DATASETS.TEST",
        "()",
        "SEED",
        "3",
    ]
    # checkpoints at iterations 1, 3, 5, then model_final at 5
    moments = [
        "save:2",  # during the save of model_0000003, mid-training
        "save:3",  # resumed from model_0000001: during the save of model_final (after model_0000003 and _0000005)
    ]
    for kill in moments:
        result = _train(tmp_path, kill, opts)
        assert result.returncode == -signal.SIGKILL, f"{kill}: expected a SIGKILL\n{result.stderr[-3000:]}"
    result = _train(tmp_path, "save:0", opts)  # no kill
    assert result.returncode == 0, result.stderr[-3000:]

    final = read_checkpoint_file(str(out / "model_final.pth"))
    assert final["iteration"] == 5
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    for name in ("model_0000001.pth", "model_0000003.pth", "model_0000005.pth"):
        assert read_checkpoint_file(str(out / name))["iteration"] == int(name[6:13])
