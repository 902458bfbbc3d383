"""Prepares PASCAL-Context with all 459 classes (PC-459, the VOC2010 val images) for Detectron2.

Input, under the dataset root (``$DETECTRON2_DATASETS``, default ``./datasets``)::

    VOCdevkit/VOC2010/JPEGImages/*.jpg             # VOCtrainval_03-May-2010.tar
    VOCdevkit/VOC2010/ImageSets/Main/val.txt       # same tarball: the val image ids
    VOCdevkit/VOC2010/trainval/*.mat               # PASCAL-Context trainval.tar.gz: one LabelMap per image
    VOCdevkit/VOC2010/labels.txt                   # same tarball: "<id>: <name>" for ids 1..459

Each ``.mat`` holds a ``LabelMap`` array whose value is the labels.txt id (1..459) of the pixel's class, or 0
where the pixel is unlabeled. Output: ``VOCdevkit/VOC2010/annotations_detectron2/pc459_val/<id>.tif``, uint16,
value - 1 (classes 0..458 in labels.txt order), and the unlabeled value 0 becomes 65535 = ignore. No pixel gets
459 (a LabelMap value above 459 is an error), so 65535 is the only ignore value of the prepared maps.

By default every id of the split list must have its ``.mat``; ``--skip-missing`` converts the ids that have one
and logs the others.
"""

import argparse
import logging
from pathlib import Path
from typing import List, Optional

import numpy as np
import scipy.io

from esc_net.data.class_names import load_class_names
from esc_net.data.paths import dataset_root
from esc_net.data.prepare.common import (
    ConversionJob,
    ConversionStats,
    LabelMapping,
    add_workers_argument,
    check_class_names,
    read_split_list,
    require_dir,
    require_file,
    run_conversion,
)
from esc_net.utils.image_writers import write_label_tiff16

logger = logging.getLogger(__name__)

BENCHMARK = "pascal_context_459"
NUM_CLASSES = 459
VOC_DOWNLOAD = "VOCtrainval_03-May-2010.tar (http://host.robots.ox.ac.uk/pascal/VOC/voc2010/)"
CONTEXT_DOWNLOAD = "PASCAL-Context trainval.tar.gz (https://www.cs.stanford.edu/~roozbeh/pascal-context/)"


def read_labels_txt(path: Path) -> List[str]:
    """Names of a PASCAL-Context labels.txt ("<id>: <name>" per line, ids 1, 2, ... in order)."""
    ids, names = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        idx, sep, name = line.partition(":")
        if not sep or not idx.strip().isdigit():
            raise ValueError(f"{path}: expected lines '<id>: <name>', got {line!r}")
        ids.append(int(idx))
        names.append(name.strip())
    if ids != list(range(1, len(ids) + 1)):
        raise ValueError(f"{path}: ids should run 1, 2, ... in order")
    return names


def label_mapping() -> LabelMapping:
    """LabelMap value v in 1..459 -> v - 1; 0 (unlabeled) -> 65535."""
    return LabelMapping(NUM_CLASSES + 1, range(1, NUM_CLASSES + 1))


def read_label_map(path: Path) -> np.ndarray:
    """The integer ``LabelMap`` [H, W] of a PASCAL-Context ``.mat`` file."""
    mat = scipy.io.loadmat(str(path))
    if "LabelMap" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path} has no 'LabelMap' variable (found {found})")
    label_map = np.asarray(mat["LabelMap"])
    if label_map.ndim != 2:
        raise ValueError(f"{path}: LabelMap should be 2-D, got shape {label_map.shape}")
    if not np.issubdtype(label_map.dtype, np.integer):
        # MATLAB may store the ids as doubles; they must still be whole numbers.
        if not np.array_equal(label_map, np.round(label_map)):
            raise ValueError(f"{path}: LabelMap holds non-integer values")
        label_map = label_map.astype(np.int64)
    return label_map


def convert_one(job: ConversionJob) -> None:
    (src,), (dst,), mapping = job
    write_label_tiff16(dst, mapping(read_label_map(src), src))


def prepare_pascal_context_459(
    root: Optional[str] = None,
    workers: int = 1,
    split_list: Optional[Path] = None,
    skip_missing: bool = False,
) -> ConversionStats:
    """Converts the LabelMaps of the split list's ids (default: VOC2010 Main val); returns the counts."""
    voc = dataset_root(root) / "VOCdevkit" / "VOC2010"
    labels_txt = require_file(voc / "labels.txt", "PASCAL-Context labels.txt", CONTEXT_DOWNLOAD)
    ours = f"esc_net/data/class_names/{BENCHMARK}.txt"
    check_class_names(read_labels_txt(labels_txt), load_class_names(BENCHMARK), str(labels_txt), ours)
    require_dir(voc / "JPEGImages", "VOC2010 images", VOC_DOWNLOAD)
    mat_dir = require_dir(voc / "trainval", "PASCAL-Context LabelMap folder", CONTEXT_DOWNLOAD)
    ids = read_split_list(split_list or voc / "ImageSets" / "Main" / "val.txt", VOC_DOWNLOAD)
    if skip_missing:
        present = [i for i in ids if (mat_dir / f"{i}.mat").is_file()]
        if len(present) < len(ids):
            missing = sorted(set(ids) - set(present))
            logger.warning(f"{len(missing)} of {len(ids)} ids have no LabelMap in {mat_dir}; skipped: {missing}")
        ids = present
    out_dir = voc / "annotations_detectron2" / "pc459_val"
    mapping = label_mapping()
    jobs = [ConversionJob((mat_dir / f"{i}.mat",), (out_dir / f"{i}.tif",), mapping) for i in ids]
    return run_conversion(jobs, convert_one, "PASCAL-Context-459 val", CONTEXT_DOWNLOAD, workers)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workers_argument(parser)
    parser.add_argument(
        "--split-list",
        type=Path,
        default=None,
        help="file of image ids to convert (default: VOCdevkit/VOC2010/ImageSets/Main/val.txt)",
    )
    parser.add_argument(
        "--skip-missing", action="store_true", help="skip (and log) listed ids that have no .mat LabelMap"
    )


def run(args: argparse.Namespace) -> ConversionStats:
    return prepare_pascal_context_459(args.root, args.workers, args.split_list, args.skip_missing)
