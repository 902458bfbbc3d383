"""Registers the training set (COCO-Stuff) and the six zero-shot benchmarks of the paper with Detectron2.

Registration touches no disk: the dataset root (``$DETECTRON2_DATASETS``, default ``./datasets``) is read when a
dataset is loaded, and a dataset whose prepared folders are absent raises FileNotFoundError naming them and the
command that prepares them (see ``datasets/README.md``).

Metadata of every dataset:

* ``stuff_classes``: the evaluated class names, in label order (PAS-20b: the 20 VOC names + "background");
* ``vocabulary``: the names the model scores; equal to ``stuff_classes`` except for PAS-20b, which scores the 20
  VOC names followed by the PASCAL-Context-59 classes that are not VOC classes, and counts every prediction from
  ``background_index`` (20) on as "background", and for the two names of :data:`PROTOCOL_NAMES`, which are scored
  under the name the published tables used (CAT-Seg's class lists);
* ``ignore_label``: 255, or 65535 for the uint16 benchmarks A-847 and PC-459, as
  :func:`esc_net.utils.label_maps.ignore_value` gives for the number of evaluated classes;
* ``evaluator_type`` ("sem_seg"), ``benchmark`` (the short name of the paper's tables), and ``image_root`` /
  ``sem_seg_root`` (resolved from the dataset root at registration and again at each load, so they always name
  the folders last loaded from).
"""

import logging
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from esc_net.data.class_names import load_class_names
from esc_net.data.datasets.complete_sem_seg import load_complete_sem_seg
from esc_net.data.paths import dataset_root
from esc_net.utils.label_maps import ignore_value

__all__ = [
    "BENCHMARK_DATASETS",
    "PROTOCOL_NAMES",
    "VOC_NAMES_IN_PASCAL_CONTEXT",
    "BenchmarkDataset",
    "register_benchmarks",
]

logger = logging.getLogger(__name__)


class BenchmarkDataset(NamedTuple):
    """One registered dataset: where its prepared files live (relative to the dataset root) and its labels."""

    name: str  # Detectron2 dataset name
    benchmark: str  # short display name
    class_names: str  # key of esc_net.data.class_names
    image_dir: str
    label_dir: str
    prepare: str  # the command that writes label_dir (an esc-net-prepare sub-command, installed with the package)
    image_ext: str = "jpg"
    label_ext: str = "png"
    background_class: bool = False  # PAS-20b: background is an evaluated class, scored through other names
    # The image folder holds other splits' images too (VOC's JPEGImages): the label maps select the split's images.
    labels_select_images: bool = False


# The single table of registered datasets.
BENCHMARK_DATASETS = (
    BenchmarkDataset(
        name="coco_stuff_171_train",
        benchmark="COCO-Stuff",
        class_names="coco_stuff_171",
        image_dir="coco-stuff/images/train2017",
        label_dir="coco-stuff/annotations_detectron2/train2017",
        prepare="esc-net-prepare coco_stuff",
    ),
    BenchmarkDataset(
        name="coco_stuff_171_val",
        benchmark="COCO-Stuff",
        class_names="coco_stuff_171",
        image_dir="coco-stuff/images/val2017",
        label_dir="coco-stuff/annotations_detectron2/val2017",
        prepare="esc-net-prepare coco_stuff",
    ),
    BenchmarkDataset(
        name="ade20k_847_val",
        benchmark="A-847",
        class_names="ade20k_847",
        image_dir="ADE20K_2021_17_01/images_detectron2/validation",
        label_dir="ADE20K_2021_17_01/annotations_detectron2/validation",
        prepare="esc-net-prepare ade20k_847",
        label_ext="tif",
    ),
    BenchmarkDataset(
        name="pascal_context_459_val",
        benchmark="PC-459",
        class_names="pascal_context_459",
        image_dir="VOCdevkit/VOC2010/JPEGImages",
        label_dir="VOCdevkit/VOC2010/annotations_detectron2/pc459_val",
        prepare="esc-net-prepare pascal_context_459",
        label_ext="tif",
        labels_select_images=True,
    ),
    BenchmarkDataset(
        name="ade20k_150_val",
        benchmark="A-150",
        class_names="ade20k_150",
        image_dir="ADEChallengeData2016/images/validation",
        label_dir="ADEChallengeData2016/annotations_detectron2/validation",
        prepare="esc-net-prepare ade20k_150",
    ),
    BenchmarkDataset(
        name="pascal_context_59_val",
        benchmark="PC-59",
        class_names="pascal_context_59",
        image_dir="VOCdevkit/VOC2010/JPEGImages",
        label_dir="VOCdevkit/VOC2010/annotations_detectron2/pc59_val",
        prepare="esc-net-prepare pascal_context_59",
        labels_select_images=True,
    ),
    BenchmarkDataset(
        name="voc_20_val",
        benchmark="PAS-20",
        class_names="voc_20",
        image_dir="VOCdevkit/VOC2012/JPEGImages",
        label_dir="VOCdevkit/VOC2012/annotations_detectron2/val",
        prepare="esc-net-prepare voc",
        labels_select_images=True,
    ),
    BenchmarkDataset(
        name="voc_20b_val",
        benchmark="PAS-20b",
        class_names="voc_20",
        image_dir="VOCdevkit/VOC2012/JPEGImages",
        label_dir="VOCdevkit/VOC2012/annotations_detectron2_bg/val",
        prepare="esc-net-prepare voc",
        labels_select_images=True,
        background_class=True,
    ),
)

# The names under which the paper's tables (CAT-Seg's evaluation lists) score two classes, where the official class
# list (kept in stuff_classes and in our data files) differs: A-150's first synonym is "television" (CAT-Seg:
# "television receiver"), PC-59's "table" is "diningtable" there. With SYNONYM_MODE "first" every other prompt
# already equals CAT-Seg's (A-150's lists keep their synonyms; CAT-Seg's use the first one).
PROTOCOL_NAMES: Dict[str, Dict[str, str]] = {
    "ade20k_150": {
        "television, television receiver, television set, tv, tv set, idiot box, boob tube, telly, goggle box": (
            "television receiver, television, television set, tv, tv set, idiot box, boob tube, telly, goggle box"
        ),
    },
    "pascal_context_59": {"table": "diningtable"},
}
# VOC class names that PASCAL-Context-59 spells differently; every other VOC name is also a PC-59 name
# (aeroplane, motorbike, pottedplant, tvmonitor, ... are spelled alike).
VOC_NAMES_IN_PASCAL_CONTEXT: Dict[str, str] = {"diningtable": "table"}
BACKGROUND = "background"


def pas20b_vocabulary() -> List[str]:
    """The 20 VOC names, then the PC-59 names that are not VOC classes (in PC-59 order): 59 names."""
    voc = load_class_names("voc_20")
    context = load_class_names("pascal_context_59")
    voc_in_context = [VOC_NAMES_IN_PASCAL_CONTEXT.get(name, name) for name in voc]
    unmatched = [name for name in voc_in_context if name not in context]
    if unmatched:
        raise ValueError(f"VOC classes {unmatched} have no PASCAL-Context-59 counterpart; fix the name mapping")
    return voc + [name for name in context if name not in voc_in_context]


def _metadata(dataset: BenchmarkDataset, root: Path) -> dict:
    classes = load_class_names(dataset.class_names)
    renamed = PROTOCOL_NAMES.get(dataset.class_names, {})
    meta = {
        "stuff_classes": classes,
        "vocabulary": [renamed.get(name, name) for name in classes],
        "evaluator_type": "sem_seg",
        "benchmark": dataset.benchmark,
        "image_root": str(root / dataset.image_dir),
        "sem_seg_root": str(root / dataset.label_dir),
    }
    if dataset.background_class:
        meta.update(stuff_classes=classes + [BACKGROUND], vocabulary=pas20b_vocabulary(), background_index=len(classes))
    meta["ignore_label"] = ignore_value(len(meta["stuff_classes"]))
    return meta


def _set_metadata(dataset: BenchmarkDataset, root: Path) -> None:
    meta = _metadata(dataset, root)
    current = MetadataCatalog.get(dataset.name)
    if current.get("sem_seg_root", None) not in (None, meta["sem_seg_root"]):
        # The root changed since registration: Metadata refuses to overwrite keys, so rebuild it.
        MetadataCatalog.remove(dataset.name)
        current = MetadataCatalog.get(dataset.name)
    current.set(**meta)


def load_benchmark(dataset: BenchmarkDataset, root: Optional[str] = None) -> List[dict]:
    """Detectron2 dicts (``file_name``, ``sem_seg_file_name``) of a prepared dataset under the dataset root.

    Raises:
        FileNotFoundError: the dataset is not prepared.
        IncompleteDatasetError: images without label maps or label maps without images (see
            :func:`~esc_net.data.datasets.complete_sem_seg.load_complete_sem_seg`).
    """
    root = dataset_root(root)
    image_root, label_root = root / dataset.image_dir, root / dataset.label_dir
    missing = [str(p) for p in (image_root, label_root) if not p.is_dir()]
    if not missing and not any(label_root.glob(f"*.{dataset.label_ext}")):
        missing = [f"{label_root}/*.{dataset.label_ext}"]
    if missing:
        raise FileNotFoundError(
            f"dataset {dataset.name!r} ({dataset.benchmark}) is not prepared: missing {', '.join(missing)} under the "
            f"dataset root {root} ($DETECTRON2_DATASETS, default ./datasets). Download it and run "
            f"`{dataset.prepare}` as datasets/README.md describes."
        )
    _set_metadata(dataset, root)
    return load_complete_sem_seg(
        str(label_root),
        str(image_root),
        gt_ext=dataset.label_ext,
        image_ext=dataset.image_ext,
        labels_select_images=dataset.labels_select_images,
    )


def register_benchmarks() -> None:
    """Registers every dataset of :data:`BENCHMARK_DATASETS` (names and metadata only; no disk access)."""
    root = dataset_root()
    for dataset in BENCHMARK_DATASETS:
        DatasetCatalog.register(dataset.name, lambda d=dataset: load_benchmark(d))
        _set_metadata(dataset, root)


register_benchmarks()
