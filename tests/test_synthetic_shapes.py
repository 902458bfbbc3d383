"""The synthetic shapes dataset: generation, labels, determinism, re-runs, Detectron2 registration and loading."""
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from esc_net.data import synthetic_shapes as ss

SMALL = dict(num_train=5, num_val=3, image_size=64, seed=3)


def _read(path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert array is not None, f"could not read {path}"
    return array


@pytest.fixture
def dataset_root(tmp_path, monkeypatch):
    """A small dataset generated under $DETECTRON2_DATASETS = tmp_path (the root is left to the env var)."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    base = ss.generate_synthetic_shapes(**SMALL)
    assert Path(base) == tmp_path / "synthetic_shapes"
    return tmp_path


def test_classes_and_colors():
    # label ids in this order: the class id of a (colour, kind) pair is 1 + 3 * colour + kind
    assert ss.SYNTHETIC_SHAPES_CLASSES == ["background"] + [
        f"{color} {kind}" for color in ("red", "green", "blue") for kind in ("circle", "square", "triangle")
    ]
    colors = dict(zip(ss.SYNTHETIC_SHAPES_CLASSES, ss.SYNTHETIC_SHAPES_COLORS))
    assert len({tuple(c) for c in colors.values()}) == 10
    # grey background; each shape colour at full, 0.6 and 1.35 brightness (capped at 255) for its three kinds
    assert colors["background"] == [128, 128, 128]
    assert (colors["red circle"], colors["red square"], colors["red triangle"]) == (
        [205, 45, 45],
        [123, 27, 27],
        [255, 61, 61],
    )
    assert colors["blue triangle"] == [61, 108, 255]


def test_writes_expected_layout(dataset_root):
    base = dataset_root / "synthetic_shapes"
    for split, count in (("train", 5), ("val", 3)):
        names = [f"{i:05d}.png" for i in range(count)]
        assert sorted(os.listdir(base / "images" / split)) == names
        assert sorted(os.listdir(base / "labels" / split)) == names
        image, label = _read(base / "images" / split / names[0]), _read(base / "labels" / split / names[0])
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert label.shape == (64, 64) and label.dtype == np.uint8
    manifest = json.loads((base / "manifest.json").read_text())
    assert manifest["num_train"] == 5 and manifest["classes"] == ss.SYNTHETIC_SHAPES_CLASSES


def test_files_hold_the_rendered_samples(dataset_root):
    """What is on disk is exactly render_sample's output for that image's generator (RGB order kept)."""
    base = dataset_root / "synthetic_shapes"
    for split, index in (("train", 4), ("val", 0)):
        image, label, _ = ss.render_sample(ss.sample_rng(3, split, index), image_size=64)
        np.testing.assert_array_equal(_read(base / "images" / split / f"{index:05d}.png")[..., ::-1], image)
        np.testing.assert_array_equal(_read(base / "labels" / split / f"{index:05d}.png"), label)


@pytest.mark.parametrize("index", range(8))
def test_labels_match_what_was_drawn(index):
    image, label, shapes = ss.render_sample(ss.sample_rng(0, "train", index), image_size=64, ignore_band=1)
    values = set(np.unique(label).tolist())
    assert values <= set(range(10)) | {255}
    assert 0 in values, "the background must stay visible"
    drawn = {s.class_id for s in shapes}
    assert values - {0, 255} and values - {0, 255} <= drawn
    # The top shape is never covered: its centre pixel carries its class, in a colour named by that class.
    top = shapes[-1]
    x, y = (int(round(v)) for v in top.center)
    assert label[y, x] == top.class_id
    color_name = ss.SYNTHETIC_SHAPES_CLASSES[top.class_id].split()[0]
    assert int(np.argmax(image[y, x])) == list(ss.SHAPE_COLORS).index(color_name)


def test_ignore_band_only_covers_boundaries():
    _, hard, _ = ss.render_sample(ss.sample_rng(1, "val", 2), image_size=64, ignore_band=0)
    _, banded, _ = ss.render_sample(ss.sample_rng(1, "val", 2), image_size=64, ignore_band=1)
    assert 255 not in hard
    ignored = banded == 255
    assert ignored.any()
    np.testing.assert_array_equal(banded[~ignored], hard[~ignored])
    # An ignored pixel has a 4- or 8-neighbour of another class in the hard label.
    padded = np.pad(hard, 1, mode="edge").astype(int)
    shifted = np.stack([padded[1 + dy:65 + dy, 1 + dx:65 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    near_boundary = (shifted != hard[None]).any(0)
    assert near_boundary[ignored].all() and ignored[near_boundary].all()


def test_deterministic_for_a_seed(tmp_path):
    a = ss.generate_synthetic_shapes(root=str(tmp_path / "a"), **SMALL)
    b = ss.generate_synthetic_shapes(root=str(tmp_path / "b"), **{**SMALL, "num_train": 2})
    c = ss.generate_synthetic_shapes(root=str(tmp_path / "c"), **{**SMALL, "seed": 4})
    first = "images/train/00001.png"
    np.testing.assert_array_equal(_read(Path(a) / first), _read(Path(b) / first))  # independent of the counts
    assert not np.array_equal(_read(Path(a) / first), _read(Path(c) / first))
    assert not np.array_equal(_read(Path(a) / first), _read(Path(a) / "images/train/00002.png"))


def test_second_run_skips_and_other_options_fail_clearly(dataset_root, monkeypatch):
    label = dataset_root / "synthetic_shapes/labels/train/00000.png"
    mtime = label.stat().st_mtime_ns

    def no_drawing(*args, **kwargs):
        raise AssertionError("a complete dataset must not be redrawn")

    monkeypatch.setattr(ss, "render_sample", no_drawing)
    ss.generate_synthetic_shapes(**SMALL)
    assert label.stat().st_mtime_ns == mtime

    with pytest.raises(FileExistsError, match=r"num_train: 5 -> 2.*--overwrite"):
        ss.generate_synthetic_shapes(**{**SMALL, "num_train": 2})


def test_overwrite_and_incomplete_runs_regenerate(dataset_root):
    base = dataset_root / "synthetic_shapes"
    ss.generate_synthetic_shapes(**{**SMALL, "num_train": 2}, overwrite=True)
    assert sorted(os.listdir(base / "images/train")) == ["00000.png", "00001.png"]  # leftovers removed
    assert sorted(os.listdir(base / "labels/train")) == ["00000.png", "00001.png"]
    assert json.loads((base / "manifest.json").read_text())["num_train"] == 2

    (base / "labels/val/00002.png").unlink()  # same options, but a file went missing: redo
    ss.generate_synthetic_shapes(**{**SMALL, "num_train": 2})
    assert (base / "labels/val/00002.png").is_file()


def test_bad_options_raise():
    with pytest.raises(ValueError, match="max_shapes"):
        ss.generate_synthetic_shapes(root="unused", max_shapes=9)
    with pytest.raises(ValueError, match="image_size"):
        ss.generate_synthetic_shapes(root="unused", image_size=16)
    with pytest.raises(ValueError, match="num_val"):
        ss.generate_synthetic_shapes(root="unused", num_val=0)
    assert not os.path.exists("unused")


def test_registered_metadata():
    for split in ("train", "val"):
        name = f"synthetic_shapes_{split}"
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.stuff_classes == ss.SYNTHETIC_SHAPES_CLASSES == meta.vocabulary
        assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg" and meta.benchmark == "Shapes"
        assert len(meta.stuff_colors) == 10
        assert meta.image_root.endswith(os.path.join("synthetic_shapes", "images", split))
        assert meta.sem_seg_root.endswith(os.path.join("synthetic_shapes", "labels", split))


def test_load_through_dataset_catalog(dataset_root):
    dicts = DatasetCatalog.get("synthetic_shapes_train")  # the root comes from the env var, read now
    assert len(dicts) == 5
    for d in dicts:
        assert Path(d["file_name"]).is_file() and Path(d["sem_seg_file_name"]).is_file()
        assert Path(d["file_name"]).name == Path(d["sem_seg_file_name"]).name
        assert str(dataset_root) in d["file_name"]
    assert len(ss.load_synthetic_shapes("val", root=str(dataset_root))) == 3


def test_missing_dataset_names_folder_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    expected = os.path.join(str(tmp_path / "nowhere"), "synthetic_shapes", "images", "val")
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get("synthetic_shapes_val")
    # the command is the installed one (a pip-installed package has no datasets/ scripts beside it)
    assert expected in str(err.value) and "`esc-net-prepare synthetic_shapes`" in str(err.value)


def test_detectron2_evaluator_and_visualizer_accept_the_metadata(dataset_root):
    """Perfect predictions score 100 mIoU through Detectron2's SemSegEvaluator; the Visualizer draws labels."""
    from detectron2.evaluation import SemSegEvaluator
    from detectron2.utils.visualizer import Visualizer

    evaluator = SemSegEvaluator("synthetic_shapes_val", distributed=False)
    evaluator.reset()
    for d in DatasetCatalog.get("synthetic_shapes_val"):
        gt = torch.from_numpy(_read(d["sem_seg_file_name"]).astype(np.int64))
        scores = torch.nn.functional.one_hot(gt.clamp(max=9), 10).permute(2, 0, 1).float()
        evaluator.process([{"file_name": d["file_name"]}], [{"sem_seg": scores}])
    assert evaluator.evaluate()["sem_seg"]["mIoU"] == pytest.approx(100.0)

    d = DatasetCatalog.get("synthetic_shapes_val")[0]
    image = _read(d["file_name"])[..., ::-1]
    visualizer = Visualizer(image, MetadataCatalog.get("synthetic_shapes_val"))
    drawn = visualizer.draw_sem_seg(_read(d["sem_seg_file_name"]))
    assert drawn.get_image().shape == (64, 64, 3)


def test_empty_root_means_the_dataset_root_variable(tmp_path, monkeypatch):
    """root="" is "not given", as for every other dataset: the data goes under $DETECTRON2_DATASETS."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "from_env"))
    monkeypatch.chdir(tmp_path)
    base = ss.generate_synthetic_shapes(root="", num_train=1, num_val=1, image_size=32)
    assert Path(base) == tmp_path / "from_env" / "synthetic_shapes"
    assert (tmp_path / "from_env/synthetic_shapes/manifest.json").is_file()
    assert not (tmp_path / "synthetic_shapes").exists()
    assert len(ss.load_synthetic_shapes("val", root="")) == 1
