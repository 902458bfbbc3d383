"""docs/own_data.md as a user follows it: a dataset laid out as its step 1 says, its script of step 2 training the
tiny model a few iterations, and the evaluation of step 3; and the one-call registration's refusals."""

import json
import os
import re
import sys

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from conftest import REPO_ROOT, TINY_CONFIG
from esc_net.data import register_sem_seg_folder

with open(os.path.join(REPO_ROOT, "docs", "own_data.md"), encoding="utf-8") as f:
    GUIDE = f.read()
CLASSES = ["grass", "red square", "blue disk"]


def _script() -> str:
    """The guide's train_my_data.py."""
    (script,) = [code for code in re.findall(r"^```python\n(.*?)^```$", GUIDE, flags=re.M | re.S) if "main()" in code]
    return script


def write_dataset(root, counts=(("train", 8), ("val", 4)), seed=0):
    """my_data/ as step 1 lays it out: classes.txt, JPEG images, 8-bit label PNGs of the same names (255: a band of
    unlabelled pixels around each square)."""
    rng = np.random.default_rng(seed)
    with open(os.path.join(root, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("# one class per line, in label order\n" + "\n".join(CLASSES) + "\n")
    for split, count in counts:
        os.makedirs(os.path.join(root, "images", split))
        os.makedirs(os.path.join(root, "labels", split))
        for i in range(count):
            image = np.zeros((64, 64, 3), np.uint8)
            image[:] = (40, 160, 40)  # BGR grass
            labels = np.zeros((64, 64), np.uint8)
            x, y = rng.integers(4, 30, size=2)
            cv2.rectangle(labels, (int(x) - 1, int(y) - 1), (int(x) + 21, int(y) + 21), 255, -1)
            cv2.rectangle(image, (int(x), int(y)), (int(x) + 20, int(y) + 20), (30, 30, 220), -1)
            cv2.rectangle(labels, (int(x), int(y)), (int(x) + 20, int(y) + 20), 1, -1)
            cx, cy = rng.integers(12, 52, size=2)
            cv2.circle(image, (int(cx), int(cy)), 9, (220, 60, 30), -1)
            cv2.circle(labels, (int(cx), int(cy)), 9, 2, -1)
            cv2.imwrite(os.path.join(root, "images", split, f"{i:04d}.jpg"), image)
            cv2.imwrite(os.path.join(root, "labels", split, f"{i:04d}.png"), labels)


def _unregister(*names):
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def _run_script(monkeypatch, *argv):
    """Runs the guide's script as ``python train_my_data.py ARGV`` (in this process: one GPU, or the CPU)."""
    _unregister("my_data_train", "my_data_val")  # each run is a new process for a user
    monkeypatch.setattr(sys, "argv", ["train_my_data.py", *argv])
    exec(compile(_script(), "docs/own_data.md, train_my_data.py", "exec"), {"__name__": "__main__"})


@pytest.mark.slow
def test_the_guide_trains_and_evaluates_a_dataset_of_ones_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("my_data")
    write_dataset("my_data")
    common = ["--config-file", TINY_CONFIG, "DATASETS.TRAIN", "('my_data_train',)", "DATASETS.TEST", "('my_data_val',)"]
    out = str(tmp_path / "output" / "my_data")
    train = ["SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "MODEL.ESC_NET.LOSS", "ce", "SEED", "0"]
    _run_script(monkeypatch, *common, *train, "OUTPUT_DIR", out)
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if "total_loss" in line]
    # Detectron2's writer logs every 20 iterations and at the last one
    assert rows[-1]["iteration"] == 2 and all(np.isfinite(r["total_loss"]) for r in rows)
    assert MetadataCatalog.get("my_data_val").stuff_classes == CLASSES  # classes.txt, its comment skipped

    os.remove(os.path.join(out, "benchmark_results.json"))  # the evaluation after training wrote one
    _run_script(
        monkeypatch, "--eval-only", *common, "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), "OUTPUT_DIR", out
    )
    with open(os.path.join(out, "benchmark_results.json")) as f:
        results = json.load(f)
    assert "my_data_val" in json.dumps(results)
    with open(os.path.join(out, "per_class_iou.csv")) as f:
        table = f.read()
    assert all(name in table for name in CLASSES)


def test_registration_refuses_what_would_fail_later(tmp_path):
    """Missing folders, a missing or empty class file, repeated names, an ignore value that is a class's label and a
    name taken already are refused when the dataset is registered, each naming what to fix."""
    write_dataset(str(tmp_path), counts=(("val", 1),))
    images, labels = str(tmp_path / "images" / "val"), str(tmp_path / "labels" / "val")
    with pytest.raises(FileNotFoundError, match=r"no folder .*labels/test"):
        register_sem_seg_folder("own_data_refused", images, str(tmp_path / "labels" / "test"), CLASSES)
    with pytest.raises(FileNotFoundError, match="vocabulary file not found: .*names.txt"):
        register_sem_seg_folder("own_data_refused", images, labels, str(tmp_path / "names.txt"))
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="holds no class name"):
        register_sem_seg_folder("own_data_refused", images, labels, str(tmp_path / "empty.txt"))
    with pytest.raises(ValueError, match="repeats class names"):
        register_sem_seg_folder("own_data_refused", images, labels, ["grass", "Grass"])
    with pytest.raises(ValueError, match="ignore_label 1 is the label of class 'red square'"):
        register_sem_seg_folder("own_data_refused", images, labels, CLASSES, ignore_label=1)
    assert "own_data_refused" not in DatasetCatalog.list()

    _unregister("own_data_ok")
    register_sem_seg_folder("own_data_ok", images, labels, str(tmp_path / "classes.txt"))
    (record,) = DatasetCatalog.get("own_data_ok")
    assert record["file_name"].endswith("0000.jpg") and record["sem_seg_file_name"].endswith("0000.png")
    meta = MetadataCatalog.get("own_data_ok")
    assert (meta.stuff_classes, meta.ignore_label, meta.evaluator_type) == (CLASSES, 255, "sem_seg")
    with pytest.raises(ValueError, match="'own_data_ok' is registered already"):
        register_sem_seg_folder("own_data_ok", images, labels, CLASSES)
