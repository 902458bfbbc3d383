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


def test_classes_split_and_colors():
    """36 objects (6 colours x 6 kinds) and 3 textures; the seen / unseen split of the README, both kinds of unseen."""
    assert len(ss.OBJECT_CLASSES) == 36 and ss.ALL_CLASSES[:3] == ["stripes", "checks", "clouds"]
    assert set(ss.SEEN_OBJECTS) | set(ss.UNSEEN_OBJECTS) == set(ss.OBJECT_CLASSES)
    assert not set(ss.SEEN_OBJECTS) & set(ss.UNSEEN_OBJECTS)
    kinds = lambda names: {ss.color_and_kind(n)[1] for n in names}  # noqa: E731
    colors = lambda names: {ss.color_and_kind(n)[0] for n in names}  # noqa: E731
    # unseen kinds: no star or cross is ever seen; unseen combinations: seen colour x seen kind
    assert kinds(ss.SEEN_OBJECTS) == {"circle", "square", "triangle", "bar"}
    assert {n for n in ss.UNSEEN_OBJECTS if ss.color_and_kind(n)[1] in ("star", "cross")} == {
        f"{c} {k}" for c in ss.SHAPE_COLORS for k in ("star", "cross")
    }
    combinations = [n for n in ss.UNSEEN_OBJECTS if ss.color_and_kind(n)[1] not in ("star", "cross")]
    assert combinations == list(ss.UNSEEN_COMBINATIONS) and len(combinations) == 6
    assert colors(combinations) == colors(ss.SEEN_OBJECTS) == set(ss.SHAPE_COLORS)
    assert kinds(combinations) <= kinds(ss.SEEN_OBJECTS)
    # Visualizer colours: one per class, the object's own hue
    drawn = [tuple(ss.class_color(n)) for n in ss.ALL_CLASSES]
    assert len(set(drawn)) == 39
    assert ss.class_color("red circle") == [210, 40, 40] and ss.class_color("stripes") == [96, 96, 96]


def test_writes_expected_layout(dataset_root):
    base = dataset_root / "synthetic_shapes"
    for split, count in (("train", 5), ("val", 3), ("val_unseen", 3), ("val_all", 3)):
        names = [f"{i:05d}.png" for i in range(count)]
        assert sorted(os.listdir(base / "images" / split)) == names
        assert sorted(os.listdir(base / "labels" / split)) == names
        image, label = _read(base / "images" / split / names[0]), _read(base / "labels" / split / names[0])
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert label.shape == (64, 64) and label.dtype == np.uint8
    manifest = json.loads((base / "manifest.json").read_text())
    assert manifest["num_train"] == 5 and manifest["vocabularies"]["train"] == ss.SEEN_CLASSES


def test_files_hold_the_rendered_samples(dataset_root):
    """What is on disk is exactly the rendered sample, its labels mapped to the split's vocabulary."""
    base = dataset_root / "synthetic_shapes"
    for split, index in (("train", 4), ("val_unseen", 0), ("val_all", 2)):
        image, label = ss.render_split_sample(3, split, index, 64, ss.DEFAULT_MAX_SHAPES, ss.DEFAULT_IGNORE_BAND)
        np.testing.assert_array_equal(_read(base / "images" / split / f"{index:05d}.png")[..., ::-1], image)
        np.testing.assert_array_equal(_read(base / "labels" / split / f"{index:05d}.png"), label)


@pytest.mark.parametrize("split", ["train", "val"])
def test_unseen_classes_are_in_no_training_label(split):
    """The seen splits draw seen objects only: no label (nor image) of theirs holds an unseen class."""
    vocabulary = ss.benchmark(split).vocabulary
    assert list(vocabulary) == ss.SEEN_CLASSES
    for i in range(40):
        sample = ss.render_sample(ss.sample_rng(0, split, i), ss.benchmark(split).objects, 64, 3, 1)
        assert {s.name for s in sample.shapes} <= set(ss.SEEN_OBJECTS)
        present = {ss.ALL_CLASSES[v] for v in np.unique(sample.label) if v != 255}
        assert present <= set(ss.SEEN_CLASSES)


def test_benchmark_vocabularies_and_groups():
    unseen, everything = ss.benchmark("val_unseen"), ss.benchmark("val_all")
    assert set(unseen.objects) == set(ss.UNSEEN_OBJECTS) and unseen.vocabulary[:3] == ("stripes", "checks", "clouds")
    assert unseen.groups == {"seen": ["stripes", "checks", "clouds"], "unseen": ss.UNSEEN_OBJECTS}
    assert everything.vocabulary == tuple(ss.ALL_CLASSES)
    assert everything.groups == {"seen": ss.SEEN_CLASSES, "unseen": ss.UNSEEN_OBJECTS}
    assert ss.benchmark("val").groups == {"seen": ss.SEEN_CLASSES}
    with pytest.raises(KeyError, match="val_rare"):
        ss.benchmark("val_rare")


def test_label_ids_follow_the_vocabulary():
    label = np.array([[0, 3, 255], [9, 2, 0]], np.uint8)  # stripes, red circle, ignore / orange circle, clouds
    vocabulary = ["clouds", "stripes", "orange circle", "red circle"]
    np.testing.assert_array_equal(ss.to_vocabulary_ids(label, vocabulary), [[1, 3, 255], [2, 0, 1]])
    with pytest.raises(ValueError, match="red circle"):
        ss.to_vocabulary_ids(label, vocabulary[:3])


def test_captions_name_what_is_visible():
    """A caption names each visible object once, largest first, then the texture; a hidden object is not named."""
    red, blue = ss.ALL_CLASSES.index("red star"), ss.ALL_CLASSES.index("blue bar")
    green = ss.ALL_CLASSES.index("green circle")
    shapes = [
        ss.Shape(green, (20.0, 20.0), 3.0, 0.0, (45, 165, 60)),  # hidden below the blue bar
        ss.Shape(blue, (20.0, 20.0), 14.0, 0.0, (45, 85, 215)),
        ss.Shape(red, (48.0, 48.0), 9.0, 0.5, (210, 40, 40)),
        ss.Shape(red, (50.0, 14.0), 8.0, 0.1, (210, 40, 40)),
    ]
    sample = ss.Sample(np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8), shapes, 1)
    assert ss.caption(sample) == "a photo of a blue bar and a red star on checks."
    masks = ss.instance_masks(sample)
    assert masks.shape == (4, 64, 64) and not masks[0].any() and masks[1:].any(axis=(1, 2)).all()
    assert not (masks.sum(axis=0) > 1).any()  # visible parts do not overlap
    only_texture = ss.Sample(sample.image, sample.label, shapes[:1] * 0, 2)
    assert ss.caption(only_texture) == "a photo of clouds."


@pytest.mark.parametrize("index", range(8))
def test_labels_match_what_was_drawn(index):
    sample = ss.render_sample(ss.sample_rng(0, "val_all", index), ss.OBJECT_CLASSES, 64, 3, 1)
    image, label, shapes = sample.image, sample.label, sample.shapes
    values = set(np.unique(label).tolist())
    assert sample.stuff in values, "the background texture must stay visible"
    assert values - {sample.stuff, 255} <= {s.class_id for s in shapes}
    # The top shape is never covered: its centre pixel carries its class, in a colour near the class's colour.
    top = shapes[-1]
    x, y = (int(round(v)) for v in top.center)
    assert label[y, x] == top.class_id
    nominal = np.array(ss.SHAPE_COLORS[ss.color_and_kind(top.name)[0]])
    assert np.abs(image[y, x].astype(int) - nominal).max() <= 25 + 25  # colour jitter and pixel noise


def test_ignore_band_only_covers_boundaries():
    hard = ss.render_sample(ss.sample_rng(1, "val", 2), ss.OBJECT_CLASSES, 64, 3, 0).label
    banded = ss.render_sample(ss.sample_rng(1, "val", 2), ss.OBJECT_CLASSES, 64, 3, 1).label
    assert 255 not in hard
    ignored = banded == 255
    assert ignored.any()
    np.testing.assert_array_equal(banded[~ignored], hard[~ignored])
    # An ignored pixel has a 4- or 8-neighbour of another class in the hard label.
    padded = np.pad(hard, 1, mode="edge").astype(int)
    shifted = np.stack([padded[1 + dy : 65 + dy, 1 + dx : 65 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
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

    monkeypatch.setattr(ss.dataset, "render_split_sample", no_drawing)
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
    for split in ss.SPLITS:
        name = f"synthetic_shapes_{split}"
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.stuff_classes == list(ss.benchmark(split).vocabulary) == meta.vocabulary
        assert meta.class_groups == ss.benchmark(split).groups
        assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg" and meta.benchmark.startswith("Shapes")
        assert meta.stuff_colors == [ss.class_color(n) for n in meta.stuff_classes]
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
        scores = torch.nn.functional.one_hot(gt.clamp(max=20), 21).permute(2, 0, 1).float()
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
