"""Prepares PASCAL VOC 2012 val (1,449 images) for Detectron2, as PAS-20 and as PAS-20b.

Input, under the dataset root (``$DETECTRON2_DATASETS``, default ``./datasets``)::

    VOCdevkit/VOC2012/JPEGImages/*.jpg                    # VOCtrainval_11-May-2012.tar
    VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt      # same tarball: the val image ids
    VOCdevkit/VOC2012/SegmentationClassAug/*.png          # optional (SBD-augmented labels, SegmentationClassAug.zip)
    VOCdevkit/VOC2012/SegmentationClass/*.png             # same tarball: palette PNGs

The label PNGs hold 0 = background, 1..20 = the VOC classes (``esc_net/data/class_names/voc_20.txt``) and
255 = void (object borders). SegmentationClassAug is used when present, else SegmentationClass (the two agree
on the val images); ``--label-dir`` picks one explicitly. Outputs, both uint8 with 255 = ignore:

    VOCdevkit/VOC2012/annotations_detectron2/val/<id>.png      # PAS-20: classes 0..19, background -> 255
    VOCdevkit/VOC2012/annotations_detectron2_bg/val/<id>.png   # PAS-20b: classes 0..19, background -> 20
"""

import argparse
import logging
from pathlib import Path
from typing import Optional

from esc_net.data.paths import dataset_root
from esc_net.data.prepare.common import (
    ConversionJob,
    ConversionStats,
    LabelMapping,
    add_workers_argument,
    read_label_image,
    read_split_list,
    require_dir,
    run_conversion,
)
from esc_net.utils.image_writers import write_label_png

logger = logging.getLogger(__name__)

NUM_CLASSES = 20
VOID = 255
LABEL_DIRS = ("SegmentationClassAug", "SegmentationClass")
VOC_DOWNLOAD = "VOCtrainval_11-May-2012.tar (http://host.robots.ox.ac.uk/pascal/VOC/voc2012/)"
# Values 21..254 occur in no VOC label map.
_INVALID = range(NUM_CLASSES + 1, VOID)


def label_mappings() -> tuple:
    """(PAS-20, PAS-20b) mappings: v in 1..20 -> v - 1; background 0 -> 255 (PAS-20) or 20 (PAS-20b)."""
    classes = list(range(1, NUM_CLASSES + 1))
    pas20 = LabelMapping(256, classes, invalid_raw_values=_INVALID)
    pas20b = LabelMapping(256, classes + [0], invalid_raw_values=_INVALID)
    return pas20, pas20b


def find_label_dir(voc: Path, label_dir: Optional[str]) -> Path:
    """The label folder: ``label_dir`` if given, else the first of SegmentationClassAug, SegmentationClass."""
    candidates = [label_dir] if label_dir else LABEL_DIRS
    for name in candidates:
        if (voc / name).is_dir():
            logger.info(f"reading VOC labels from {voc / name}")
            return voc / name
    return require_dir(voc / candidates[-1], f"VOC label folder ({' or '.join(candidates)})", VOC_DOWNLOAD)


def convert_one(job: ConversionJob) -> None:
    (src, _image), (dst20, dst20b), (pas20, pas20b) = job
    raw = read_label_image(src)
    write_label_png(dst20, pas20(raw, src))
    write_label_png(dst20b, pas20b(raw, src))


def prepare_voc(root: Optional[str] = None, workers: int = 1, label_dir: Optional[str] = None) -> ConversionStats:
    """Writes the PAS-20 and PAS-20b label maps of the val images; returns the written/skipped counts."""
    voc = dataset_root(root) / "VOCdevkit" / "VOC2012"
    image_dir = require_dir(voc / "JPEGImages", "VOC2012 images", VOC_DOWNLOAD)
    ids = read_split_list(voc / "ImageSets" / "Segmentation" / "val.txt", VOC_DOWNLOAD)
    labels = find_label_dir(voc, label_dir)
    mappings = label_mappings()
    jobs = [
        ConversionJob(
            (labels / f"{i}.png", image_dir / f"{i}.jpg"),
            (
                voc / "annotations_detectron2" / "val" / f"{i}.png",
                voc / "annotations_detectron2_bg" / "val" / f"{i}.png",
            ),
            mappings,
        )
        for i in ids
    ]
    return run_conversion(jobs, convert_one, "PASCAL VOC 2012 val", VOC_DOWNLOAD, workers)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workers_argument(parser)
    parser.add_argument(
        "--label-dir", choices=LABEL_DIRS, default=None, help="label folder (default: the first one present)"
    )


def run(args: argparse.Namespace) -> ConversionStats:
    return prepare_voc(args.root, args.workers, args.label_dir)
