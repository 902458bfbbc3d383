"""Prepares ADE20K-full (A-847, the 2,000 validation images of ADE20K_2021_17_01) for Detectron2.

Input, under the dataset root (``$DETECTRON2_DATASETS``, default ``./datasets``), from the ADE20K full release
(ADE20K_2021_17_01.zip)::

    ADE20K_2021_17_01/index_ade20k.pkl                    # 'filename', 'folder', 'objectnames', ...
    ADE20K_2021_17_01/images/ADE/validation/<scene>/ADE_val_*.jpg
    ADE20K_2021_17_01/images/ADE/validation/<scene>/ADE_val_*_seg.png

The index's ``folder`` entries are paths relative to the dataset root. A ``_seg.png`` encodes the object class
of each pixel in its colour: class value = (R // 10) * 256 + G, where value v > 0 is ``objectnames[v - 1]`` and
0 is unlabeled. The 847 benchmark classes are the values listed in
``esc_net/data/class_names/ade20k_847_source_ids.txt``; the script checks that the index names them as our
``ade20k_847.txt`` does.

Output (the benchmark protocol also resizes: images whose short side exceeds 512 px are shrunk to 512,
bilinear for the image, nearest for the labels; ``--max-short-side 0`` keeps the original size)::

    ADE20K_2021_17_01/images_detectron2/validation/ADE_val_*.jpg       # copies, or resized re-encodings
    ADE20K_2021_17_01/annotations_detectron2/validation/ADE_val_*.tif  # uint16, classes 0..846, 65535 = ignore
"""

import argparse
import pickle
from pathlib import Path
from typing import List, Optional, Sequence

import cv2
import numpy as np
from PIL import Image

from esc_net.data.class_names import load_class_names, load_source_ids
from esc_net.data.paths import dataset_root
from esc_net.data.prepare.common import (
    ConversionJob,
    ConversionStats,
    LabelMapping,
    add_workers_argument,
    check_class_names,
    require_file,
    run_conversion,
)
from esc_net.utils.image_writers import copy_file, write_label_tiff16, write_rgb_image
from esc_net.utils.safe_pickle import load_restricted_pickle

BENCHMARK = "ade20k_847"
RELEASE = "ADE20K_2021_17_01"
DOWNLOAD = "the ADE20K full release ADE20K_2021_17_01.zip (https://groups.csail.mit.edu/vision/datasets/ADE20K/)"
DEFAULT_MAX_SHORT_SIDE = 512
# (R // 10) * 256 + G with R, G <= 255.
_NUM_RAW_VALUES = (255 // 10) * 256 + 256
_INDEX_KEYS = ("filename", "folder", "objectnames")


def load_index(path: Path) -> dict:
    """The release's index (a pickled dict of lists and numpy arrays), checked for the keys this script reads.

    The file is unpickled without running code: a pickle that names anything but numpy arrays, dtypes and plain
    containers is refused with a ValueError.
    """
    with open(require_file(path, "ADE20K full index", DOWNLOAD), "rb") as f:
        try:
            index = load_restricted_pickle(f)
        except (pickle.UnpicklingError, EOFError) as error:
            raise ValueError(
                f"{path} is not the ADE20K index (index_ade20k.pkl from {DOWNLOAD}): {error or 'the file ends early'}"
            ) from error
    missing = [k for k in _INDEX_KEYS if not isinstance(index, dict) or k not in index]
    if missing:
        raise ValueError(f"{path} should be a dict with keys {list(_INDEX_KEYS)}; missing {missing}")
    if len(index["filename"]) != len(index["folder"]):
        raise ValueError(f"{path}: 'filename' and 'folder' have different lengths")
    return index


def check_index_names(objectnames: Sequence[str], source: str) -> None:
    """Our 847 (id, name) pairs must match the index: objectnames[id - 1] == name."""
    ids = load_source_ids(BENCHMARK)
    if max(ids) > len(objectnames):
        raise ValueError(f"{source} lists {len(objectnames)} object names, fewer than our largest id {max(ids)}")
    check_class_names(
        [str(objectnames[i - 1]) for i in ids],
        load_class_names(BENCHMARK),
        f"{source} (objectnames at our ids)",
        f"esc_net/data/class_names/{BENCHMARK}.txt",
    )


def label_mapping() -> LabelMapping:
    """Class value (R // 10) * 256 + G -> benchmark class 0..846; every other value -> 65535."""
    return LabelMapping(_NUM_RAW_VALUES, load_source_ids(BENCHMARK))


def decode_class_values(seg: np.ndarray) -> np.ndarray:
    """Class values [H, W] (int32) of an ADE20K full ``_seg.png`` [H, W, 3] (RGB uint8)."""
    return (seg[..., 0].astype(np.int32) // 10) * 256 + seg[..., 1].astype(np.int32)


def resized_shape(height: int, width: int, max_short_side: int) -> Optional[tuple]:
    """(height, width) with the short side shrunk to ``max_short_side``, or None when no resize is needed."""
    short = min(height, width)
    if max_short_side <= 0 or short <= max_short_side:
        return None
    scale = max_short_side / short
    return (max_short_side, round(width * scale)) if height == short else (round(height * scale), max_short_side)


def convert_one(job: ConversionJob) -> None:
    (image_path, seg_path), (image_out, label_out), (mapping, max_short_side) = job
    with Image.open(seg_path) as seg_img:
        seg = np.asarray(seg_img.convert("RGB"))
    labels = mapping(decode_class_values(seg), seg_path)
    with Image.open(image_path) as img:
        width, height = img.size
        image = np.asarray(img.convert("RGB"))
    if labels.shape != (height, width):
        raise ValueError(f"{seg_path} is {labels.shape[::-1]} (W, H) but its image {image_path} is {(width, height)}")
    shape = resized_shape(height, width, max_short_side)
    if shape is None:
        copy_file(image_path, image_out)
    else:
        size = (shape[1], shape[0])  # OpenCV takes (width, height)
        write_rgb_image(image_out, cv2.resize(image, size, interpolation=cv2.INTER_LINEAR))
        labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    write_label_tiff16(label_out, labels)


def validation_jobs(root: Path, index: dict, max_short_side: int) -> List[ConversionJob]:
    """One job per validation image of the index (file names ``ADE_val_*``)."""
    out_base = root / RELEASE
    mapping = label_mapping()
    jobs = []
    for folder, file_name in zip(index["folder"], index["filename"]):
        if not file_name.startswith("ADE_val_"):
            continue
        image_path = root / folder / file_name
        seg_path = image_path.with_name(image_path.stem + "_seg.png")
        outputs = (
            out_base / "images_detectron2" / "validation" / file_name,
            out_base / "annotations_detectron2" / "validation" / (image_path.stem + ".tif"),
        )
        jobs.append(ConversionJob((image_path, seg_path), outputs, (mapping, max_short_side)))
    if not jobs:
        raise ValueError("the index lists no validation image (file names starting with 'ADE_val_')")
    return jobs


def prepare_ade20k_847(
    root: Optional[str] = None, workers: int = 1, max_short_side: int = DEFAULT_MAX_SHORT_SIDE
) -> ConversionStats:
    """Converts the validation images and labels; returns the written/skipped counts."""
    root = dataset_root(root)
    index_path = root / RELEASE / "index_ade20k.pkl"
    index = load_index(index_path)
    check_index_names(index["objectnames"], str(index_path))
    jobs = validation_jobs(root, index, max_short_side)
    return run_conversion(jobs, convert_one, "ADE20K-847 validation", DOWNLOAD, workers)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workers_argument(parser)
    parser.add_argument(
        "--max-short-side",
        type=int,
        default=DEFAULT_MAX_SHORT_SIDE,
        help="shrink images whose short side is longer (default 512, the benchmark protocol; 0 = keep size)",
    )


def run(args: argparse.Namespace) -> ConversionStats:
    return prepare_ade20k_847(args.root, args.workers, args.max_short_side)
