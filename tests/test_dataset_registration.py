"""Registration of the benchmark datasets and their class-name lists: metadata, vocabularies, load-time errors."""

from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from esc_net.data.class_names import BENCHMARK_CLASS_FILES, load_class_names, load_source_ids
from esc_net.data.datasets import BENCHMARK_DATASETS, VOC_NAMES_IN_PASCAL_CONTEXT
from esc_net.data.datasets.register_benchmarks import PROTOCOL_NAMES
from esc_net.data.paths import dataset_root
from esc_net.data.prepare.cli import COMMANDS, PROG, prepare
from esc_net.data.vocabulary import get_dataset_vocabulary

EXPECTED = {
    # name: (benchmark, number of evaluated classes, ignore label)
    "coco_stuff_171_train": ("COCO-Stuff", 171, 255),
    "coco_stuff_171_val": ("COCO-Stuff", 171, 255),
    "ade20k_847_val": ("A-847", 847, 65535),
    "pascal_context_459_val": ("PC-459", 459, 65535),
    "ade20k_150_val": ("A-150", 150, 255),
    "pascal_context_59_val": ("PC-59", 59, 255),
    "voc_20_val": ("PAS-20", 20, 255),
    "voc_20b_val": ("PAS-20b", 21, 255),
}


def test_class_name_lists():
    for benchmark, count in BENCHMARK_CLASS_FILES.items():
        names = load_class_names(benchmark)
        assert len(names) == count == len(set(names))
        assert all(name == name.strip() and name for name in names)
    # Synonyms stay on one entry.
    assert load_class_names("ade20k_150")[:4] == ["wall", "building, edifice", "sky", "floor, flooring"]
    assert load_class_names("ade20k_847")[-1] == "adding machine, totalizer, totaliser"
    coco = load_class_names("coco_stuff_171")
    assert (coco[0], coco[79], coco[80], coco[170]) == ("person", "toothbrush", "banner", "wood")
    assert load_class_names("voc_20")[10] == "diningtable"
    # The returned list is a copy: callers cannot corrupt the shared data.
    load_class_names("voc_20").append("unicorn")
    assert len(load_class_names("voc_20")) == 20
    with pytest.raises(KeyError, match="unknown benchmark 'voc_21'"):
        load_class_names("voc_21")


def test_source_ids():
    coco = load_source_ids("coco_stuff_171")
    # COCO ids 1..182 without the 11 ids COCO never used.
    assert sorted(set(range(1, 183)) - set(coco)) == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91]
    assert coco == sorted(coco)
    ade = load_source_ids("ade20k_847")
    assert len(set(ade)) == 847 and (ade[0], ade[-1]) == (2978, 3148)
    with pytest.raises(KeyError, match="no source-id list"):
        load_source_ids("voc_20")


def test_pascal_context_classes_are_a_subset():
    full = load_class_names("pascal_context_459")
    assert set(load_class_names("pascal_context_59")) <= set(full)
    # PC-59 keeps the PASCAL-Context id order.
    ids = [full.index(n) for n in load_class_names("pascal_context_59")]
    assert ids == sorted(ids)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registered_metadata(name):
    benchmark, num_classes, ignore = EXPECTED[name]
    assert name in DatasetCatalog.list()
    meta = MetadataCatalog.get(name)
    assert meta.benchmark == benchmark
    assert len(meta.stuff_classes) == num_classes
    assert meta.ignore_label == ignore
    assert meta.evaluator_type == "sem_seg"
    assert meta.image_root and meta.sem_seg_root
    assert get_dataset_vocabulary(name) == list(meta.vocabulary)
    if name != "voc_20b_val":
        # scored as the evaluated classes, except the two names the published tables (CAT-Seg's lists) use
        differ = {(c, v) for c, v in zip(meta.stuff_classes, meta.vocabulary) if c != v}
        assert len(meta.vocabulary) == len(meta.stuff_classes)
        assert differ == {
            "ade20k_150_val": {
                (load_class_names("ade20k_150")[89], PROTOCOL_NAMES["ade20k_150"][load_class_names("ade20k_150")[89]])
            },
            "pascal_context_59_val": {("table", "diningtable")},
        }.get(name, set())
        assert meta.get("background_index", None) is None


def test_scored_names_are_the_published_protocols():
    """With SYNONYM_MODE "first", the prompt names are CAT-Seg's evaluation lists: A-150 class 89 is "television
    receiver", PC-59 class 49 "diningtable"; every other A-150 prompt is the official first synonym."""
    from esc_net.modeling.clip.text_prompts import build_prompts

    ade = get_dataset_vocabulary("ade20k_150_val")
    prompts, _ = build_prompts(ade, ["{}"], "first")
    assert prompts[89] == "television receiver" and prompts[0] == "wall" and prompts[1] == "building"
    assert get_dataset_vocabulary("pascal_context_59_val")[49] == "diningtable"


def test_registration_table_is_complete():
    assert sorted(d.name for d in BENCHMARK_DATASETS) == sorted(EXPECTED)


def test_pas20b_vocabulary():
    meta = MetadataCatalog.get("voc_20b_val")
    voc = load_class_names("voc_20")
    context = load_class_names("pascal_context_59")
    assert list(meta.stuff_classes) == voc + ["background"]
    assert meta.background_index == 20
    vocabulary = list(meta.vocabulary)
    assert vocabulary[:20] == voc
    extra = vocabulary[20:]
    # Every PC-59 class is scored once: the 20 shared ones under their VOC name, the 39 others after them.
    assert len(vocabulary) == len(set(vocabulary)) == 59
    assert "table" not in extra and "bag" in extra and "wall" in extra
    assert set(extra) | {VOC_NAMES_IN_PASCAL_CONTEXT.get(n, n) for n in voc} == set(context)
    assert extra == [n for n in context if n in extra]  # PC-59 order


@pytest.mark.parametrize("dataset", BENCHMARK_DATASETS, ids=lambda d: d.name)
def test_missing_dataset_names_folder(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as info:
        DatasetCatalog.get(dataset.name)
    message = str(info.value)
    assert str(tmp_path / "nowhere" / dataset.label_dir) in message
    assert "datasets/README.md" in message and f"`{dataset.prepare}`" in message
    # the named command is one the package installs (a pip-installed package has no datasets/ scripts beside it)
    program, subcommand = dataset.prepare.split()
    assert program == PROG and subcommand in COMMANDS


def _prepare_voc_folders(root: Path) -> None:
    """Prepared PAS-20 folders holding one image and one label map."""
    images = root / "VOCdevkit/VOC2012/JPEGImages"
    labels = root / "VOCdevkit/VOC2012/annotations_detectron2/val"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(images / "2007_000033.jpg")
    Image.fromarray(np.array([[0, 255], [19, 3]], np.uint8)).save(labels / "2007_000033.png")


def test_empty_label_folder_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    (tmp_path / "VOCdevkit/VOC2012/JPEGImages").mkdir(parents=True)
    (tmp_path / "VOCdevkit/VOC2012/annotations_detectron2/val").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"annotations_detectron2/val/\*\.png"):
        DatasetCatalog.get("voc_20_val")


def test_root_is_read_at_load_time(tmp_path, monkeypatch):
    for sub in ("a", "b"):
        _prepare_voc_folders(tmp_path / sub)
        monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / sub))
        dicts = DatasetCatalog.get("voc_20_val")
        assert [Path(d["file_name"]) for d in dicts] == [
            tmp_path / sub / "VOCdevkit/VOC2012/JPEGImages/2007_000033.jpg"
        ]
        assert dicts[0]["sem_seg_file_name"].startswith(str(tmp_path / sub))
        # The metadata paths follow the root the dataset was loaded from; the rest is unchanged.
        meta = MetadataCatalog.get("voc_20_val")
        assert meta.sem_seg_root == str(tmp_path / sub / "VOCdevkit/VOC2012/annotations_detectron2/val")
        assert meta.image_root == str(tmp_path / sub / "VOCdevkit/VOC2012/JPEGImages")
        assert meta.benchmark == "PAS-20" and len(meta.stuff_classes) == 20


@pytest.mark.parametrize(
    "root, variable, expected",
    [
        ("/data/given", "/data/env", "/data/given"),
        (None, "/data/env", "/data/env"),
        ("", "/data/env", "/data/env"),  # an empty --root is "not given"
        (None, None, "datasets"),
        ("", "", "datasets"),  # an empty variable too: not the working directory
        ("~/data", None, str(Path.home() / "data")),
    ],
)
def test_dataset_root_rule(root, variable, expected, monkeypatch):
    if variable is None:
        monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    else:
        monkeypatch.setenv("DETECTRON2_DATASETS", variable)
    assert dataset_root(root) == Path(expected)


def test_loading_and_preparing_read_the_same_root(tmp_path, monkeypatch):
    """An empty variable means ./datasets for the loaders and the preparation commands alike."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DETECTRON2_DATASETS", "")
    _prepare_voc_folders(tmp_path / "datasets")
    [record] = DatasetCatalog.get("voc_20_val")
    expected = Path("datasets/VOCdevkit/VOC2012/annotations_detectron2/val/2007_000033.png")
    assert Path(record["sem_seg_file_name"]) == expected
    with pytest.raises(FileNotFoundError, match=r"datasets/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"):
        prepare(["voc", "--root", ""])
