"""scripts/run_default.sh end to end at a reduced length: dataset, training, evaluation table, demo; then a rerun
that skips the finished work."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import REPO_ROOT

from esc_net.utils.checkpoint import read_checkpoint_file

SCRIPT = os.path.join(REPO_ROOT, "scripts", "run_default.sh")


def _run_default(env):
    result = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"run_default.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout + result.stderr


def test_run_default_end_to_end_and_rerun(tmp_path):
    data, out = tmp_path / "datasets", tmp_path / "output"
    env = dict(
        os.environ,
        # The suite runs after scripts/setup_env.sh (run_tests.sh); the test uses the interpreter it runs under.
        ESC_NET_SKIP_SETUP="1",
        ESC_NET_VENV=sys.prefix,
        ESC_NET_DEFAULT_ITERS="6",
        ESC_NET_NUM_TRAIN="8",
        ESC_NET_NUM_VAL="3",
        ESC_NET_OUTPUT=str(out),
        DETECTRON2_DATASETS=str(data),
    )
    log = _run_default(env)

    assert len(os.listdir(data / "synthetic_shapes" / "images" / "train")) == 8
    assert len(os.listdir(data / "synthetic_shapes" / "images" / "val")) == 3
    checkpoint = out / "model_final.pth"
    assert checkpoint.is_file()
    with open(out / "metrics.json") as f:
        iterations = [json.loads(line)["iteration"] for line in f if "total_loss" in line]
    assert max(iterations) == 5  # ESC_NET_DEFAULT_ITERS reached train_net.py
    results = json.loads((out / "benchmark_results.json").read_text())["results"]["synthetic_shapes_val"]
    present = [iou for iou in results["IoU"].values() if iou is not None]  # null: a class absent from the labels
    assert present and results["mIoU"] == pytest.approx(sum(present) / len(present))
    assert set(results["IoU"]) <= {"background", "red circle", "red square", "red triangle", "green circle",
                                   "green square", "green triangle", "blue circle", "blue square", "blue triangle"}
    assert "Shapes" in log  # the benchmark table, headed by the dataset's benchmark name
    overlay = cv2.imread(str(out / "demo" / "00000_overlay.png"))
    labels = cv2.imread(str(out / "demo" / "00000_labels.png"), cv2.IMREAD_UNCHANGED)
    assert overlay is not None and overlay.shape[2] == 3
    assert labels.dtype == np.uint8 and labels.shape == (96, 96) and labels.max() < 10
    assert f"held-out mIoU (synthetic_shapes_val): {results['mIoU']:.1f}" in log
    for path in (checkpoint, out / "benchmark_results.json", out / "demo" / "00000_overlay.png"):
        assert str(path) in log

    # A second run keeps the dataset and the checkpoint, evaluates again and redraws the demo.
    mtime = checkpoint.stat().st_mtime_ns
    log = _run_default(env)
    assert "skipping training" in log and "nothing to do" in log
    assert checkpoint.stat().st_mtime_ns == mtime
    rerun = json.loads((out / "benchmark_results.json").read_text())["results"]["synthetic_shapes_val"]
    assert rerun["mIoU"] == results["mIoU"]

    # A final checkpoint that does not load (left by a kill in an older version) is not "already trained": the
    # script trains again and ends with a checkpoint that loads.
    checkpoint.write_bytes(b"")
    log = _run_default(env)
    assert "does not load" in log and "skipping training" not in log
    assert read_checkpoint_file(str(checkpoint))["iteration"] == 5
