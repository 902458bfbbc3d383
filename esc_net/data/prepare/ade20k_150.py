"""Prepares ADE20K-150 (A-150, the 2,000 ADEChallengeData2016 validation images) for Detectron2.

Input, under the dataset root (``$DETECTRON2_DATASETS``, default ``./datasets``)::

    ADEChallengeData2016/images/validation/*.jpg
    ADEChallengeData2016/annotations/validation/*.png   # 0 = other, 1..150 = the classes
    ADEChallengeData2016/objectInfo150.txt              # the class names (checked against ours)

all from ADEChallengeData2016.zip. Output: ``ADEChallengeData2016/annotations_detectron2/validation/*.png``,
uint8, value - 1 (classes 0..149 in objectInfo150 order), and 0 ("other") becomes 255 = ignore.
"""

import argparse
from pathlib import Path
from typing import List, Optional

from esc_net.data.class_names import load_class_names
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

BENCHMARK = "ade20k_150"
DOWNLOAD = "ADEChallengeData2016.zip (http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip)"
NUM_CLASSES = 150


def read_object_info(path: Path) -> List[str]:
    """Class names of objectInfo150.txt (tab-separated Idx, Ratio, Train, Val, Name; one header line)."""
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]
    if any(len(row) != 5 for row in rows):
        raise ValueError(f"{path}: expected 5 tab-separated columns (Idx, Ratio, Train, Val, Name) per row")
    if [int(row[0]) for row in rows] != list(range(1, len(rows) + 1)):
        raise ValueError(f"{path}: the Idx column should run 1, 2, ... in order")
    # Some names carry trailing blanks in the official file.
    return [row[4].strip() for row in rows]


def label_mapping() -> LabelMapping:
    """Raw value v in 1..150 -> v - 1; 0 ("other") -> 255."""
    return LabelMapping(NUM_CLASSES + 1, range(1, NUM_CLASSES + 1))


def convert_one(job: ConversionJob) -> None:
    (src,), (dst,), mapping = job
    write_label_png(dst, mapping(read_label_image(src), src))


def prepare_ade20k_150(root: Optional[str] = None, workers: int = 1) -> ConversionStats:
    """Converts the validation annotations; returns the written/skipped counts."""
    base = dataset_root(root) / "ADEChallengeData2016"
    info = require_file(base / "objectInfo150.txt", "ADE20K-150 class list", DOWNLOAD)
    check_class_names(
        read_object_info(info), load_class_names(BENCHMARK), str(info), f"esc_net/data/class_names/{BENCHMARK}.txt"
    )
    require_dir(base / "images" / "validation", "ADE20K-150 validation images", DOWNLOAD)
    raw_dir = require_dir(base / "annotations" / "validation", "ADE20K-150 validation annotations", DOWNLOAD)
    sources = sorted(raw_dir.glob("*.png"))
    if not sources:
        raise FileNotFoundError(f"{raw_dir} holds no PNG annotations; it comes from {DOWNLOAD}")
    out_dir = base / "annotations_detectron2" / "validation"
    mapping = label_mapping()
    jobs = [ConversionJob((src,), (out_dir / src.name,), mapping) for src in sources]
    return run_conversion(jobs, convert_one, "ADE20K-150 validation", DOWNLOAD, workers)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workers_argument(parser)


def run(args: argparse.Namespace) -> ConversionStats:
    return prepare_ade20k_150(args.root, args.workers)
