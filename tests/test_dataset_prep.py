"""The dataset preparation commands on miniature datasets written in each official raw format.

Every test writes a few files laid out and encoded like the official download, runs the command's entry point
(``esc-net-prepare <dataset> ...``, through :func:`esc_net.data.prepare.cli.prepare`),
then loads the result through Detectron2 (the registered dataset, with $DETECTRON2_DATASETS pointing at the
miniature root) and checks the label values against what it wrote. Re-runs must skip, and missing or
inconsistent inputs must fail with messages that name the file and where it comes from.
"""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from PIL import Image
from pycocotools import mask as mask_utils

import esc_net.data.datasets  # noqa: F401  (registers the benchmarks)
from esc_net.data.class_names import load_class_names, load_source_ids
from esc_net.data.prepare.cli import prepare


def write_jpeg(path: Path, height: int, width: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


def write_png(path: Path, array: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if palette:  # like VOC's SegmentationClass: indices into a colour palette
        img = img.convert("P")
        img.putpalette(list(np.random.default_rng(1).integers(0, 255, 768, dtype=np.uint8)))
        img.putdata(array.flatten().tolist())
    img.save(path)


def loaded_labels(dataset_name: str) -> dict:
    """{image stem: label array} of a registered dataset, loaded through Detectron2."""
    dicts = DatasetCatalog.get(dataset_name)
    for d in dicts:
        assert Path(d["file_name"]).stem == Path(d["sem_seg_file_name"]).stem
        assert Path(d["file_name"]).is_file()
    return {Path(d["sem_seg_file_name"]).stem: read_image(d["sem_seg_file_name"]) for d in dicts}


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    return tmp_path


# ---------------------------------------------------------------------------------------------------- COCO-Stuff


def make_coco_stuff(root: Path) -> dict:
    """One stuffthing map per split: raw value = COCO id - 1, 255 unlabeled."""
    raw = np.array([[0, 11, 12, 91], [181, 255, 0, 0]], dtype=np.uint8)  # person, unused id 12, stop sign, ...
    for split in ("train2017", "val2017"):
        write_jpeg(root / "coco-stuff/images" / split / "000000000139.jpg", 2, 4)
        write_png(root / "coco-stuff/annotations" / split / "000000000139.png", raw)
    # person -> 0, COCO id 12 (never used) -> ignore, stop sign -> 11, banner -> 80, wood -> 170
    return {"000000000139": np.array([[0, 255, 11, 80], [170, 255, 0, 0]])}


def test_coco_stuff(root, tmp_path):
    expected = make_coco_stuff(root)
    categories = tmp_path / "stuff_val2017.json"
    categories.write_text(json.dumps({"categories": [{"id": 1, "name": "person"}, {"id": 92, "name": "banner"}]}))
    stats = prepare(["coco_stuff", "--check-categories", str(categories)])
    assert {split: s.written for split, s in stats.items()} == {"train2017": 1, "val2017": 1}
    for name in ("coco_stuff_171_train", "coco_stuff_171_val"):
        labels = loaded_labels(name)
        np.testing.assert_array_equal(labels["000000000139"], expected["000000000139"])
        assert labels["000000000139"].dtype == np.uint8
    assert MetadataCatalog.get("coco_stuff_171_val").stuff_classes[80] == "banner"

    output = root / "coco-stuff/annotations_detectron2/val2017/000000000139.png"
    mtime = output.stat().st_mtime_ns
    again = prepare(["coco_stuff"])
    assert {s.written for s in again.values()} == {0} and {s.skipped for s in again.values()} == {1}
    assert output.stat().st_mtime_ns == mtime


def test_coco_stuff_errors(root, tmp_path):
    empty = tmp_path / "empty"
    with pytest.raises(FileNotFoundError, match=r"coco-stuff/images/val2017[\s\S]*zips/val2017.zip"):
        prepare(["coco_stuff", "--splits", "val2017", "--root", str(empty)])
    write_jpeg(empty / "coco-stuff/images/val2017/000000000139.jpg", 2, 2)
    with pytest.raises(
        FileNotFoundError, match=r"coco-stuff/annotations/val2017[\s\S]*stuffthingmaps_trainval2017.zip"
    ):
        prepare(["coco_stuff", "--splits", "val2017", "--root", str(empty)])

    make_coco_stuff(root)
    wrong = tmp_path / "instances.json"
    wrong.write_text(json.dumps({"categories": [{"id": 1, "name": "human"}]}))
    with pytest.raises(ValueError, match="'human'.*'person'"):
        prepare(["coco_stuff", "--check-categories", str(wrong)])

    write_png(root / "coco-stuff/annotations/val2017/000000000285.png", np.full((2, 2), 200, np.uint8))
    with pytest.raises(ValueError, match=r"000000000285.png: unexpected raw label values \[200\]"):
        prepare(["coco_stuff", "--splits", "val2017"])


# ---------------------------------------------------------------------------------------------------- ADE20K-150


def write_object_info(path: Path, names) -> None:
    """objectInfo150.txt as shipped: a header, then tab-separated Idx, Ratio, Train, Val, Name."""
    rows = ["Idx\tRatio\tTrain\tVal\tName"]
    # The official file pads some Idx and Name fields with blanks.
    rows += [
        f"{i + 1}{' ' if i == 21 else ''}\t0.01\t10\t1\t{name}{' ' if i == 7 else ''}" for i, name in enumerate(names)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")


def make_ade20k_150(root: Path) -> dict:
    base = root / "ADEChallengeData2016"
    write_object_info(base / "objectInfo150.txt", load_class_names("ade20k_150"))
    raw = np.array([[0, 1, 2], [150, 75, 0]], dtype=np.uint8)
    write_jpeg(base / "images/validation/ADE_val_00000001.jpg", 2, 3)
    write_png(base / "annotations/validation/ADE_val_00000001.png", raw)
    return {"ADE_val_00000001": np.array([[255, 0, 1], [149, 74, 255]])}


def test_ade20k_150(root):
    expected = make_ade20k_150(root)
    assert prepare(["ade20k_150"]).written == 1
    labels = loaded_labels("ade20k_150_val")
    np.testing.assert_array_equal(labels["ADE_val_00000001"], expected["ADE_val_00000001"])
    assert prepare(["ade20k_150"]).skipped == 1


def test_ade20k_150_errors(root):
    with pytest.raises(FileNotFoundError, match=r"objectInfo150.txt[\s\S]*ADEChallengeData2016.zip"):
        prepare(["ade20k_150"])
    make_ade20k_150(root)
    names = load_class_names("ade20k_150")
    names[3] = "floor"
    write_object_info(root / "ADEChallengeData2016/objectInfo150.txt", names)
    with pytest.raises(ValueError, match="class 3: download has 'floor'"):
        prepare(["ade20k_150"])


# ----------------------------------------------------------------------------------------------------- ADE20K-847

NUM_OBJECT_NAMES = 3688  # objectnames of the 2021 release


def seg_png(values: np.ndarray) -> np.ndarray:
    """The ADE20K full colour code of class values: (R // 10) * 256 + G; B (instances) is irrelevant."""
    r = (values // 256) * 10 + 7  # any R in [10 k, 10 k + 9] decodes to k
    return np.stack([r, values % 256, np.full_like(values, 3)], axis=-1).astype(np.uint8)


def make_ade20k_847(root: Path, objectnames=None) -> dict:
    """An index_ade20k.pkl with the release's structure, one train image and two validation images."""
    base = root / "ADE20K_2021_17_01"
    if objectnames is None:
        objectnames = [f"object {i}" for i in range(NUM_OBJECT_NAMES)]
        for value, name in zip(load_source_ids("ade20k_847"), load_class_names("ade20k_847")):
            objectnames[value - 1] = name
    files = [
        ("ADE_train_00000001.jpg", "ADE20K_2021_17_01/images/ADE/training/urban/street"),
        ("ADE_val_00000001.jpg", "ADE20K_2021_17_01/images/ADE/validation/urban/street"),
        ("ADE_val_00000002.jpg", "ADE20K_2021_17_01/images/ADE/validation/home/kitchen"),
    ]
    num_images, num_classes = len(files), len(objectnames)
    index = {
        "filename": [f for f, _ in files],
        "folder": [d for _, d in files],
        "scene": ["/street", "/street", "/kitchen"],
        "objectnames": objectnames,
        "objectIsPart": np.zeros((num_classes, num_images), dtype=np.uint8),
        "objectPresence": np.zeros((num_classes, num_images), dtype=np.uint8),
        "objectcounts": np.zeros(num_classes, dtype=np.int64),
        "proportionClassIsPart": np.zeros(num_classes),
        "wordnet_found": np.zeros(num_classes, dtype=bool),
        "wordnet_level1": [""] * num_classes,
        "wordnet_synset": [""] * num_classes,
        "wordnet_hypernym": [""] * num_classes,
        "wordnet_gloss": [""] * num_classes,
        "wordnet_synonyms": [""] * num_classes,
        "wordnet_frequency": np.zeros(num_classes, dtype=np.int64),
        "description": {"filename": "array of length N=3 with the image file names"},
    }
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "index_ade20k.pkl", "wb") as f:
        pickle.dump(index, f)

    # wall (2978 -> 0), adding machine (3148 -> 846), a non-benchmark object (1), unlabeled (0), car (401 -> 14)
    small = np.array([[2978, 3148, 1], [0, 401, 2978]])
    large = np.full((600, 520), 401)
    large[:300] = 2978
    for (file_name, folder), values in zip(files, (small, small, large)):
        image = root / folder / file_name
        write_jpeg(image, *values.shape)
        write_png(image.with_name(image.stem + "_seg.png"), seg_png(values))
    return {"ADE_val_00000001": np.array([[0, 846, 65535], [65535, 14, 0]])}


def test_ade20k_847(root):
    expected = make_ade20k_847(root)
    assert prepare(["ade20k_847"]).written == 2  # the validation images only
    labels = loaded_labels("ade20k_847_val")
    assert sorted(labels) == ["ADE_val_00000001", "ADE_val_00000002"]
    small = labels["ADE_val_00000001"]
    assert small.dtype == np.uint16
    np.testing.assert_array_equal(small, expected["ADE_val_00000001"])
    # The 520x600 (W x H) image has its short side shrunk to 512, labels by nearest neighbour.
    large = labels["ADE_val_00000002"]
    assert large.shape == (591, 512)
    assert set(np.unique(large)) == {0, 14}
    assert (large[:290] == 0).all() and (large[300:] == 14).all()
    out = root / "ADE20K_2021_17_01/images_detectron2/validation"
    assert Image.open(out / "ADE_val_00000002.jpg").size == (512, 591)
    # Images that need no resize are copied byte for byte.
    original = root / "ADE20K_2021_17_01/images/ADE/validation/urban/street/ADE_val_00000001.jpg"
    assert (out / "ADE_val_00000001.jpg").read_bytes() == original.read_bytes()
    assert prepare(["ade20k_847"]).skipped == 2


def test_ade20k_847_errors(root):
    with pytest.raises(FileNotFoundError, match=r"index_ade20k.pkl[\s\S]*ADE20K_2021_17_01.zip"):
        prepare(["ade20k_847"])
    names = [f"object {i}" for i in range(NUM_OBJECT_NAMES)]
    make_ade20k_847(root, objectnames=names)
    with pytest.raises(ValueError, match="objectnames at our ids"):
        prepare(["ade20k_847"])
    make_ade20k_847(root)
    (root / "ADE20K_2021_17_01/images/ADE/validation/home/kitchen/ADE_val_00000002_seg.png").unlink()
    with pytest.raises(FileNotFoundError, match="ADE_val_00000002_seg.png"):
        prepare(["ade20k_847"])


# ------------------------------------------------------------------------------------------- PASCAL-Context-459


def make_pascal_context_459(root: Path, ids=("2008_000002", "2008_000003")) -> dict:
    voc = root / "VOCdevkit/VOC2010"
    voc.mkdir(parents=True)
    names = load_class_names("pascal_context_459")
    (voc / "labels.txt").write_text("".join(f"{i + 1}: {name}\n" for i, name in enumerate(names)))
    (voc / "ImageSets/Main").mkdir(parents=True)
    (voc / "ImageSets/Main/val.txt").write_text("\n".join(ids) + "\n")
    maps = {
        "2008_000002": np.array([[0, 1, 459], [2, 2, 427]], dtype=np.uint16),
        "2008_000003": np.array([[459.0, 0.0], [68.0, 1.0]]),  # a LabelMap stored as MATLAB doubles
    }
    (voc / "trainval").mkdir()
    for image_id in ids:
        write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", *maps[image_id].shape)
        scipy.io.savemat(voc / "trainval" / f"{image_id}.mat", {"LabelMap": maps[image_id]})
    return {"2008_000002": np.array([[65535, 0, 458], [1, 1, 426]]), "2008_000003": np.array([[458, 65535], [67, 0]])}


def test_pascal_context_459(root):
    expected = make_pascal_context_459(root)
    assert prepare(["pascal_context_459"]).written == 2
    labels = loaded_labels("pascal_context_459_val")
    assert labels.keys() == expected.keys()
    for image_id, values in expected.items():
        assert labels[image_id].dtype == np.uint16
        np.testing.assert_array_equal(labels[image_id], values)
    # The unlabeled value of the prepared maps is 65535, never 459.
    tif = root / "VOCdevkit/VOC2010/annotations_detectron2/pc459_val/2008_000002.tif"
    with Image.open(tif) as img:
        assert img.mode == "I;16" and np.asarray(img).dtype == np.uint16
    assert prepare(["pascal_context_459"]).skipped == 2


def test_pascal_context_459_errors(root):
    make_pascal_context_459(root, ids=("2008_000002",))
    voc = root / "VOCdevkit/VOC2010"
    (voc / "ImageSets/Main/val.txt").write_text("2008_000002\n2008_000099\n")
    with pytest.raises(FileNotFoundError, match=r"2008_000099.mat[\s\S]*trainval.tar.gz"):
        prepare(["pascal_context_459"])
    assert prepare(["pascal_context_459", "--skip-missing"]).written == 1

    scipy.io.savemat(voc / "trainval/2008_000099.mat", {"LabelMap": np.array([[460]], dtype=np.uint16)})
    write_jpeg(voc / "JPEGImages/2008_000099.jpg", 1, 1)
    with pytest.raises(ValueError, match="2008_000099.mat: raw label values span"):
        prepare(["pascal_context_459"])

    (voc / "labels.txt").write_text("1: accordion\n2: airplane\n")
    with pytest.raises(ValueError, match="lists 2 classes"):
        prepare(["pascal_context_459"])


# -------------------------------------------------------------------------------------------- PASCAL-Context-59


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.int64)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def make_pascal_context_59(root: Path) -> dict:
    """trainval_merged.json in the Detail-API format: two val images and one train image."""
    voc = root / "VOCdevkit/VOC2010"
    h, w = 4, 5
    left = np.zeros((h, w), bool)
    left[:, :3] = True
    square = np.zeros((h, w), bool)
    square[1:3, 2:4] = True
    corner = np.zeros((h, w), bool)
    corner[3, 4] = True
    annotations = [
        # aeroplane (2 -> 0) on the left, then wood (458 -> 58) painted over part of it,
        # then accordion (1, not a PC-59 class -> 255); the rest stays unannotated (255)
        {"id": 1, "image_id": 2008000002, "category_id": 2, "segmentation": rle(left)},
        {"id": 2, "image_id": 2008000002, "category_id": 458, "segmentation": uncompressed_rle(square)},
        {"id": 3, "image_id": 2008000002, "category_id": 1, "segmentation": rle(corner)},
        {"id": 4, "image_id": 2008000004, "category_id": 397, "segmentation": rle(~left)},  # table -> 49
        {"id": 5, "image_id": 2008000003, "category_id": 2, "segmentation": rle(left)},
    ]
    images = [
        {"image_id": 2008000002, "file_name": "2008_000002.jpg", "height": h, "width": w, "phase": "val"},
        {"image_id": 2008000003, "file_name": "2008_000003.jpg", "height": h, "width": w, "phase": "train"},
        {"image_id": 2008000004, "file_name": "2008_000004.jpg", "height": h, "width": w, "phase": "val"},
    ]
    categories = [
        {"category_id": i + 1, "name": name, "supercategory": "object", "onlysemantic": 0, "parts": []}
        for i, name in enumerate(load_class_names("pascal_context_459"))
    ]
    data = {"info": {}, "images": images, "categories": categories, "annos_segmentation": annotations}
    data.update(annos_occlusion=[], annos_boundary=[], annos_joints=[], parts=[])
    voc.mkdir(parents=True)
    (voc / "trainval_merged.json").write_text(json.dumps(data))
    for img in images:
        write_jpeg(voc / "JPEGImages" / img["file_name"], h, w)
    first = np.full((h, w), 255)
    first[left] = 0
    first[square] = 58
    first[corner] = 255
    second = np.full((h, w), 255)
    second[~left] = 49
    return {"2008_000002": first, "2008_000004": second}


def test_pascal_context_59(root):
    expected = make_pascal_context_59(root)
    assert prepare(["pascal_context_59"]).written == 2  # the train image is not converted
    labels = loaded_labels("pascal_context_59_val")
    assert labels.keys() == expected.keys()
    for image_id, values in expected.items():
        np.testing.assert_array_equal(labels[image_id], values)
    assert prepare(["pascal_context_59"]).skipped == 2


def test_pascal_context_59_errors(root):
    with pytest.raises(FileNotFoundError, match=r"trainval_merged.json[\s\S]*codalabuser"):
        prepare(["pascal_context_59"])
    make_pascal_context_59(root)
    path = root / "VOCdevkit/VOC2010/trainval_merged.json"
    data = json.loads(path.read_text())
    data["categories"][396]["name"] = "diningtable"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="download has 'diningtable'.*'table'"):
        prepare(["pascal_context_59"])
    del data["images"][0]["phase"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"entries of 'images' lack the keys \['phase'\]"):
        prepare(["pascal_context_59"])


# ------------------------------------------------------------------------------------------------- PASCAL VOC


def make_voc(root: Path, label_dir: str = "SegmentationClassAug") -> dict:
    voc = root / "VOCdevkit/VOC2012"
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n2007_000042\n")
    raws = {
        "2007_000033": np.array([[0, 1, 20], [255, 11, 0]], dtype=np.uint8),
        "2007_000042": np.array([[15, 15], [0, 255]], dtype=np.uint8),
    }
    for image_id, raw in raws.items():
        write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", *raw.shape)
        write_png(voc / label_dir / f"{image_id}.png", raw, palette=label_dir == "SegmentationClass")
    return {
        "voc_20_val": {"2007_000033": [[255, 0, 19], [255, 10, 255]], "2007_000042": [[14, 14], [255, 255]]},
        "voc_20b_val": {"2007_000033": [[20, 0, 19], [255, 10, 20]], "2007_000042": [[14, 14], [20, 255]]},
    }


@pytest.mark.parametrize("label_dir,workers", [("SegmentationClassAug", 1), ("SegmentationClass", 2)])
def test_voc(root, label_dir, workers):
    expected = make_voc(root, label_dir)
    assert prepare(["voc", "--workers", str(workers)]).written == 2
    for dataset_name, maps in expected.items():
        labels = loaded_labels(dataset_name)
        assert labels.keys() == maps.keys()
        for image_id, values in maps.items():
            np.testing.assert_array_equal(labels[image_id], np.array(values))
    meta = MetadataCatalog.get("voc_20b_val")
    assert meta.stuff_classes[20] == "background" and meta.background_index == 20
    assert prepare(["voc"]).skipped == 2


def test_voc_errors(root):
    with pytest.raises(FileNotFoundError, match=r"JPEGImages[\s\S]*VOCtrainval_11-May-2012.tar"):
        prepare(["voc"])
    make_voc(root)
    with pytest.raises(FileNotFoundError, match="SegmentationClass"):
        prepare(["voc", "--label-dir", "SegmentationClass"])
    write_png(root / "VOCdevkit/VOC2012/SegmentationClassAug/2007_000042.png", np.full((2, 2), 21, np.uint8))
    with pytest.raises(ValueError, match=r"unexpected raw label values \[21\]"):
        prepare(["voc"])
