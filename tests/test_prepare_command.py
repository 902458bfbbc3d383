"""The dataset preparation command as users run it, each time in a fresh Python process.

``esc-net-prepare <dataset>`` (:func:`esc_net.data.prepare.cli.main`), ``python -m esc_net.data.prepare`` and
the scripts in datasets/ must work, and neither they nor the dataset registration may load the model libraries
(open_clip, segment_anything, timm): preparing data needs none of them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from esc_net.data.synthetic_shapes import DEFAULT_MAX_SHAPES, render_split_sample

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "datasets").glob("*.py"))
MODEL_LIBRARIES = ("open_clip", "segment_anything", "timm")

# Imports the data side of the package, runs every script and the module with --help (printing each help after a
# marker line), then prints which model libraries got loaded.
_LIGHT_RUN = f"""
import runpy, sys
import esc_net, esc_net.data, esc_net.data.datasets, esc_net.evaluation
for script in sys.argv[1:]:
    print("=== " + script, flush=True)
    sys.argv = [script, "--help"]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit:
        assert exit.code == 0, (script, exit.code)
print("=== -m esc_net.data.prepare", flush=True)
sys.argv = ["esc-net-prepare", "--help"]
try:
    runpy.run_module("esc_net.data.prepare", run_name="__main__")
except SystemExit as exit:
    assert exit.code == 0, exit.code
print("=== loaded")
print(sorted(name for name in {MODEL_LIBRARIES!r} if name in sys.modules))
"""


def run_python(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """``python *args`` with this checkout first on the import path."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": path}
    )


@pytest.mark.slow
def test_registration_and_commands_do_not_load_the_model_libraries():
    result = run_python("-c", _LIGHT_RUN, *map(str, SCRIPTS))
    assert result.returncode == 0, result.stderr
    sections = {}
    for block in result.stdout.split("=== ")[1:]:
        name, _, text = block.partition("\n")
        sections[name] = text
    assert sections["loaded"].strip() == "[]"
    # Each script shows its own dataset's command, under its own name.
    helps = {Path(name).stem: text for name, text in sections.items() if name.endswith(".py")}
    assert sorted(helps) == [
        "generate_synthetic_shapes",
        "prepare_ade20k_150",
        "prepare_ade20k_847",
        "prepare_coco_stuff",
        "prepare_pascal_context_459",
        "prepare_pascal_context_59",
        "prepare_voc",
    ]
    for stem, text in helps.items():
        assert text.startswith(f"usage: {stem}.py [-h] [--root ROOT]"), text
    assert "--label-dir" in helps["prepare_voc"] and "PAS-20b" in helps["prepare_voc"]
    assert "--max-short-side" in helps["prepare_ade20k_847"]
    assert "--check-categories" in helps["prepare_coco_stuff"]
    assert "--skip-missing" in helps["prepare_pascal_context_459"]
    assert "--num-train" in helps["generate_synthetic_shapes"]
    command_help = sections["-m esc_net.data.prepare"]
    assert command_help.startswith("usage: esc-net-prepare [-h] DATASET ...")
    for dataset in ("ade20k_150", "ade20k_847", "coco_stuff", "pascal_context_59", "pascal_context_459", "voc"):
        assert f"    {dataset} " in command_help or f"    {dataset}\n" in command_help


@pytest.mark.slow
def test_the_predictor_is_still_exported_by_the_package():
    result = run_python("-c", "import esc_net; print(esc_net.ESCNetPredictor.__module__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["esc_net.predictor"]
    result = run_python("-c", "import esc_net; esc_net.NoSuchThing")
    assert "module 'esc_net' has no attribute 'NoSuchThing'" in result.stderr


@pytest.mark.slow
def test_python_m_prepares_a_dataset(tmp_path):
    """``python -m esc_net.data.prepare voc`` on a miniature VOC: both label sets are written."""
    voc = tmp_path / "VOCdevkit/VOC2012"
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n")
    (voc / "JPEGImages").mkdir()
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(voc / "JPEGImages/2007_000033.jpg")
    (voc / "SegmentationClass").mkdir()
    Image.fromarray(np.array([[0, 1, 20], [255, 11, 0]], np.uint8)).save(voc / "SegmentationClass/2007_000033.png")

    result = run_python("-m", "esc_net.data.prepare", "voc", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "wrote 1, skipped 0" in result.stderr  # the progress log is on
    pas20 = np.asarray(Image.open(voc / "annotations_detectron2/val/2007_000033.png"))
    pas20b = np.asarray(Image.open(voc / "annotations_detectron2_bg/val/2007_000033.png"))
    np.testing.assert_array_equal(pas20, [[255, 0, 19], [255, 10, 255]])
    np.testing.assert_array_equal(pas20b, [[20, 0, 19], [255, 10, 20]])


@pytest.mark.slow
def test_a_missing_download_ends_with_its_message_and_status_1(tmp_path):
    result = run_python("-m", "esc_net.data.prepare", "ade20k_150", "--root", str(tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "ADEChallengeData2016/objectInfo150.txt") in result.stderr
    assert "ADEChallengeData2016.zip" in result.stderr

    result = run_python("-m", "esc_net.data.prepare", "ade20k_151")
    assert result.returncode == 2 and "invalid choice: 'ade20k_151'" in result.stderr


@pytest.mark.slow
def test_generate_synthetic_shapes_script(tmp_path):
    """``python datasets/generate_synthetic_shapes.py``, run from another folder, writes the documented files."""
    script = str(REPO / "datasets" / "generate_synthetic_shapes.py")
    options = ["--num-train", "2", "--num-val", "1", "--image-size", "32", "--ignore-band", "0"]
    result = run_python(script, "--root", str(tmp_path / "data"), *options, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    base = tmp_path / "data" / "synthetic_shapes"
    manifest = json.loads((base / "manifest.json").read_text())
    assert tuple(manifest[k] for k in ("num_train", "num_val", "image_size", "ignore_band")) == (2, 1, 32, 0)
    image, label = render_split_sample(0, "val", 0, 32, DEFAULT_MAX_SHAPES, 0)
    np.testing.assert_array_equal(np.asarray(Image.open(base / "images/val/00000.png")), image)
    np.testing.assert_array_equal(np.asarray(Image.open(base / "labels/val/00000.png")), label)
    assert sorted(p.name for p in (base / "images/train").iterdir()) == ["00000.png", "00001.png"]
