"""A dataset is complete or refused: images without label maps and label maps without images are an error naming
the files, in training and in evaluation, unless DATASETS.ALLOW_INCOMPLETE accepts them (the report then says how
many images were scored); a damaged label map is named."""

import os

import pytest
from detectron2.engine import default_argument_parser

from conftest import TINY_CONFIG
from esc_net.data.datasets import IncompleteDatasetError, incomplete_datasets_allowed, load_complete_sem_seg
from esc_net.data.synthetic_shapes import generate_synthetic_shapes, split_dirs
from esc_net.engine import Trainer, run, setup


def _files(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")  # load_sem_seg reads no file


def test_missing_files_on_either_side_are_named(tmp_path):
    _files(tmp_path / "img", ["a.jpg", "b.jpg", "c.jpg"])
    _files(tmp_path / "lab", ["a.png", "b.png", "d.png"])
    with pytest.raises(IncompleteDatasetError) as error:
        load_complete_sem_seg(str(tmp_path / "lab"), str(tmp_path / "img"), "png", "jpg")
    message = str(error.value)
    assert f"1 image(s) without a label map in {tmp_path / 'lab'}: {tmp_path / 'img' / 'c.jpg'}" in message
    assert f"1 label map(s) without an image in {tmp_path / 'img'}: {tmp_path / 'lab' / 'd.png'}" in message
    assert "DATASETS.ALLOW_INCOMPLETE True to use only the 2 complete pairs" in message
    with incomplete_datasets_allowed():
        records = load_complete_sem_seg(str(tmp_path / "lab"), str(tmp_path / "img"), "png", "jpg")
    assert [os.path.basename(r["file_name"]) for r in records] == ["a.jpg", "b.jpg"]
    assert [os.path.basename(r["sem_seg_file_name"]) for r in records] == ["a.png", "b.png"]


def test_an_accepted_incomplete_set_never_pairs_files_of_different_names(tmp_path):
    # equal counts: Detectron2's load_sem_seg would pair b.jpg with c.png by position
    _files(tmp_path / "img", ["a.jpg", "b.jpg"])
    _files(tmp_path / "lab", ["a.png", "c.png"])
    with incomplete_datasets_allowed():
        records = load_complete_sem_seg(str(tmp_path / "lab"), str(tmp_path / "img"), "png", "jpg")
    assert [(os.path.basename(r["file_name"]), os.path.basename(r["sem_seg_file_name"])) for r in records] == [
        ("a.jpg", "a.png")
    ]


def test_a_shared_image_folder_is_selected_by_its_label_maps(tmp_path):
    """VOC's JPEGImages holds every split: there, only label maps without images are missing files."""
    _files(tmp_path / "img", ["a.jpg", "b.jpg", "c.jpg"])
    _files(tmp_path / "lab", ["a.png", "b.png"])
    records = load_complete_sem_seg(
        str(tmp_path / "lab"), str(tmp_path / "img"), "png", "jpg", labels_select_images=True
    )
    assert len(records) == 2
    _files(tmp_path / "lab", ["e.png"])
    with pytest.raises(IncompleteDatasetError, match="1 label map\\(s\\) without an image .*e.png"):
        load_complete_sem_seg(str(tmp_path / "lab"), str(tmp_path / "img"), "png", "jpg", labels_select_images=True)


@pytest.fixture
def shapes(tmp_path, monkeypatch):
    """A small synthetic-shapes dataset under a temporary $DETECTRON2_DATASETS."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    generate_synthetic_shapes(num_train=4, num_val=3, image_size=64)
    return tmp_path


def _args(tmp_path, *opts, eval_only=False):
    argv = [
        "--config-file",
        TINY_CONFIG,
        *(["--eval-only"] if eval_only else []),
        "DATASETS.TRAIN",
        "('synthetic_shapes_train',)",
        "DATASETS.TEST",
        "('synthetic_shapes_val',)",
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        "SOLVER.IMS_PER_BATCH",
        "2",
        *opts,
    ]
    return default_argument_parser().parse_args(argv)


def test_evaluation_refuses_an_image_without_labels_or_reports_the_images_it_scored(shapes):
    _, labels = split_dirs(None, "val")
    os.remove(os.path.join(labels, "00001.png"))
    with pytest.raises(IncompleteDatasetError, match=f"image\\(s\\) without a label map in {labels}: .*00001.png"):
        run(_args(shapes, eval_only=True))
    results = run(_args(shapes, "DATASETS.ALLOW_INCOMPLETE", "True", eval_only=True))
    assert results["synthetic_shapes_val"]["sem_seg"]["images"] == 2
    table = (shapes / "out" / "benchmark_results.csv").read_text().splitlines()
    assert table[0].endswith(",images") and table[1].endswith(",2")


def test_an_image_deleted_with_its_label_map_is_missing_from_what_the_manifest_lists(shapes):
    """The folders agree with each other, but the dataset's manifest lists 3 validation images: 2 are refused as
    an incomplete dataset, and scored only when incomplete datasets are accepted."""
    images, labels = split_dirs(None, "val")
    for folder in (images, labels):
        os.remove(os.path.join(folder, "00001.png"))
    manifest = shapes / "data" / "synthetic_shapes" / "manifest.json"
    with pytest.raises(IncompleteDatasetError) as error:
        run(_args(shapes, eval_only=True))
    assert f"1 image(s) that {manifest} lists missing, with their label maps in {labels}: {images}/00001.png" in str(
        error.value
    )
    assert "DATASETS.ALLOW_INCOMPLETE True to use only the 2 complete pairs" in str(error.value)
    results = run(_args(shapes, "DATASETS.ALLOW_INCOMPLETE", "True", eval_only=True))
    assert results["synthetic_shapes_val"]["sem_seg"]["images"] == 2


def test_training_refuses_a_label_map_without_its_image(shapes):
    images, labels = split_dirs(None, "train")
    os.remove(os.path.join(images, "00002.png"))
    with pytest.raises(IncompleteDatasetError, match=f"without an image in {images}: {labels}/00002.png"):
        Trainer(setup(_args(shapes)))


def test_a_truncated_label_map_is_named(shapes):
    _, labels = split_dirs(None, "val")
    path = os.path.join(labels, "00000.png")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(OSError, match=f"cannot read the label map {path}: OSError: image file is truncated"):
        run(_args(shapes, eval_only=True))
