"""Prepares COCO-Stuff (171 classes, train2017 and val2017) for Detectron2.

Input, under the dataset root (``$DETECTRON2_DATASETS``, default ``./datasets``)::

    coco-stuff/images/{train2017,val2017}/*.jpg        # COCO 2017 images (train2017.zip, val2017.zip)
    coco-stuff/annotations/{train2017,val2017}/*.png   # stuffthingmaps_trainval2017.zip

The stuffthing maps store COCO category id - 1 (0..181, with the 11 ids COCO never used left out) and 255 for
unlabeled pixels. Output: ``coco-stuff/annotations_detectron2/{train2017,val2017}/*.png``, uint8, with the 171
classes numbered 0..170 in COCO id order (``esc_net/data/class_names/coco_stuff_171.txt``) and 255 = ignore.

The stuffthing maps carry no class names; pass the COCO annotation files that do (``instances_val2017.json``
and ``stuff_val2017.json``) with ``--check-categories`` to check that they agree with our list.
"""

import argparse
import json
from pathlib import Path
from typing import Dict, Optional, Sequence

from esc_net.data.class_names import load_class_names, load_source_ids
from esc_net.data.paths import dataset_root
from esc_net.data.prepare.common import (
    ConversionJob,
    ConversionStats,
    LabelMapping,
    add_workers_argument,
    check_class_names,
    read_label_image,
    require_dir,
    require_file,
    run_conversion,
)
from esc_net.utils.image_writers import write_label_png

BENCHMARK = "coco_stuff_171"
SPLITS = ("train2017", "val2017")
IMAGES_DOWNLOAD = "the COCO 2017 images (http://images.cocodataset.org/zips/{split}.zip)"
MAPS_DOWNLOAD = (
    "stuffthingmaps_trainval2017.zip "
    "(http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip)"
)
# Raw values 0..181 are COCO ids 1..182; 182..254 occur in no stuffthing map.
_NUM_COCO_IDS = 182


def label_mapping() -> LabelMapping:
    """Raw stuffthing-map value (COCO id - 1, 255 unlabeled) -> class id 0..170, 255 ignore."""
    raw_values = [coco_id - 1 for coco_id in load_source_ids(BENCHMARK)]
    return LabelMapping(256, raw_values, invalid_raw_values=range(_NUM_COCO_IDS, 255))


def check_categories(json_paths: Sequence[Path]) -> None:
    """Checks the categories of COCO annotation files against our names (ids outside the 171 are not ours)."""
    ours: Dict[int, str] = dict(zip(load_source_ids(BENCHMARK), load_class_names(BENCHMARK)))
    for path in json_paths:
        with open(require_file(path, "COCO annotation file", "the COCO 2017 annotations")) as f:
            categories = json.load(f).get("categories")
        if not categories:
            raise ValueError(f"{path} has no 'categories' list; pass a COCO-format annotation file")
        shared = sorted(c["id"] for c in categories if c["id"] in ours)
        if not shared:
            raise ValueError(f"{path}: none of its category ids is a COCO-Stuff class")
        found = {c["id"]: c["name"] for c in categories}
        ours_file = f"esc_net/data/class_names/{BENCHMARK}.txt"
        check_class_names([found[i] for i in shared], [ours[i] for i in shared], str(path), ours_file)


def convert_one(job: ConversionJob) -> None:
    (src,), (dst,), mapping = job
    write_label_png(dst, mapping(read_label_image(src), src))


def prepare_coco_stuff(
    root: Optional[str] = None,
    splits: Sequence[str] = SPLITS,
    workers: int = 1,
    check_category_files: Sequence[Path] = (),
) -> Dict[str, ConversionStats]:
    """Converts the stuffthing maps of ``splits``; returns the written/skipped counts per split."""
    if check_category_files:
        check_categories(check_category_files)
    base = dataset_root(root) / "coco-stuff"
    mapping = label_mapping()
    stats = {}
    for split in splits:
        require_dir(base / "images" / split, f"COCO {split} images", IMAGES_DOWNLOAD.format(split=split))
        raw_dir = require_dir(base / "annotations" / split, f"COCO-Stuff {split} stuffthing maps", MAPS_DOWNLOAD)
        sources = sorted(raw_dir.glob("*.png"))
        if not sources:
            raise FileNotFoundError(f"{raw_dir} holds no PNG stuffthing maps; it comes from {MAPS_DOWNLOAD}")
        out_dir = base / "annotations_detectron2" / split
        jobs = [ConversionJob((src,), (out_dir / src.name,), mapping) for src in sources]
        stats[split] = run_conversion(jobs, convert_one, f"COCO-Stuff {split}", MAPS_DOWNLOAD, workers)
    return stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workers_argument(parser)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument(
        "--check-categories",
        nargs="+",
        type=Path,
        default=[],
        metavar="JSON",
        help="COCO annotation files (e.g. instances_val2017.json stuff_val2017.json) whose category names are "
        "checked against ours",
    )


def run(args: argparse.Namespace) -> Dict[str, ConversionStats]:
    return prepare_coco_stuff(args.root, args.splits, args.workers, args.check_categories)
