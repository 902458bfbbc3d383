"""scripts/run_default.sh end to end at a reduced length: the world, pre-training, training, the zero-shot table, the
demo; then a rerun that skips the finished work."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import REPO_ROOT
from esc_net.data import synthetic_shapes as ss
from esc_net.utils.checkpoint import read_checkpoint_file

pytestmark = pytest.mark.slow  # runs scripts/run_default.sh three times

SCRIPT = os.path.join(REPO_ROOT, "scripts", "run_default.sh")


def _run_default(env):
    result = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"run_default.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout + result.stderr


def test_run_default_end_to_end_and_rerun(tmp_path):
    """The laboratory at a reduced length: the world, the two pre-training stages, ESC-Net training in two processes,
    the zero-shot table and the demo; a rerun skips every finished stage; a final checkpoint that does not load is
    trained again."""
    data, out, pretrained = tmp_path / "datasets", tmp_path / "output", tmp_path / "pretrained"
    env = dict(
        os.environ,
        # The suite runs after scripts/setup_env.sh (run_tests.sh); the test uses the interpreter it runs under.
        ESC_NET_SKIP_SETUP="1",
        ESC_NET_VENV=sys.prefix,
        ESC_NET_DEFAULT_ITERS="4",
        # pre-trained again rather than taken from the model zoo, at a reduced length
        ESC_NET_FROM_SCRATCH="1",
        ESC_NET_CLIP_STEPS="2",
        ESC_NET_SAM_STEPS="2",
        ESC_NET_ALIGN_STEPS="2",
        ESC_NET_PRETRAIN_IMAGES="128",  # at least the CLIP stage's batch of 128
        ESC_NET_NUM_TRAIN="32",  # at least the alignment stage's batch of 32
        ESC_NET_NUM_VAL="3",
        ESC_NET_OUTPUT=str(out),
        ESC_NET_PRETRAINED=str(pretrained),
        DETECTRON2_DATASETS=str(data),
    )
    log = _run_default(env)

    for split, count in (("train", 32), ("val", 3), ("val_unseen", 3), ("val_all", 3)):
        assert len(os.listdir(data / "synthetic_shapes" / "images" / split)) == count
    for stem in ("clip_tiny_shapes", "sam_tiny_shapes", "sam_projection_tiny_shapes"):
        report = json.loads((pretrained / f"{stem}.json").read_text())
        assert report["steps_done"] == report["settings"]["steps"] == 2, stem
        assert (pretrained / os.path.basename(report["weights"])).is_file(), stem
    # ESC-Net trained from the aligned projection the script made, not the model zoo's
    config = (out / "config.yaml").read_text()
    assert f"SAM_PROJECTION_WEIGHTS: {pretrained / 'sam_projection_tiny_shapes.pth'}" in config
    checkpoint = out / "model_final.pth"
    assert checkpoint.is_file()
    with open(out / "metrics.json") as f:
        iterations = [json.loads(line)["iteration"] for line in f if "total_loss" in line]
    assert max(iterations) == 3  # ESC_NET_DEFAULT_ITERS reached train_net.py
    results = json.loads((out / "benchmark_results.json").read_text())["results"]
    assert set(results) == {"synthetic_shapes_val", "synthetic_shapes_val_unseen", "synthetic_shapes_val_all"}
    seen = results["synthetic_shapes_val"]
    present = [iou for iou in seen["IoU"].values() if iou is not None]  # null: a class absent from the labels
    assert present and seen["mIoU"] == pytest.approx(sum(present) / len(present))
    assert set(seen["IoU"]) == set(ss.SEEN_CLASSES)
    unseen = results["synthetic_shapes_val_unseen"]
    assert set(unseen["IoU"]) == set(ss.STUFF_CLASSES) | set(ss.UNSEEN_OBJECTS)
    assert {"mIoU-seen", "mIoU-unseen", "hIoU"} <= set(unseen) and "hIoU" in results["synthetic_shapes_val_all"]
    assert "Shapes unseen" in log and "hIoU" in log  # the benchmark table
    overlay = cv2.imread(str(out / "demo" / "00000_overlay.png"))
    labels = cv2.imread(str(out / "demo" / "00000_labels.png"), cv2.IMREAD_UNCHANGED)
    assert overlay is not None and overlay.shape[2] == 3
    # the demo scored the unseen benchmark's vocabulary on one of its images
    assert labels.dtype == np.uint8 and labels.shape == (64, 64) and labels.max() < 21
    assert f"Shapes unseen  mIoU {unseen['mIoU']:.1f}" in log and "stage times:" in log
    for path in (checkpoint, out / "benchmark_results.json", out / "demo" / "00000_overlay.png"):
        assert str(path) in log

    # A second run keeps the dataset, the pre-trained weights, the checkpoint and its evaluation, and redraws the
    # demo.
    kept = (checkpoint, out / "benchmark_results.json", pretrained / "clip_tiny_shapes.pt")
    mtimes = {p: p.stat().st_mtime_ns for p in kept}
    log = _run_default(env)
    assert "skipping training and evaluation" in log and "nothing to do" in log
    assert log.count("stage: skipping it") == 3  # CLIP, SAM, alignment
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in mtimes.items())
    rerun = json.loads((out / "benchmark_results.json").read_text())["results"]["synthetic_shapes_val"]
    assert rerun["mIoU"] == seen["mIoU"]

    # A final checkpoint that does not load (left by a kill in an older version) is not "already trained": the
    # script trains again and ends with a checkpoint that loads.
    checkpoint.write_bytes(b"")
    log = _run_default(env)
    assert "does not load" in log and "skipping training" not in log
    assert read_checkpoint_file(str(checkpoint))["iteration"] == 3
