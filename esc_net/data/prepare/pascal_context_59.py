"""Prepares PASCAL-Context with its 59 frequent classes (PC-59, the VOC2010 val images) for Detectron2.

Input, under the dataset root (``$DETECTRON2_DATASETS``, default ``./datasets``)::

    VOCdevkit/VOC2010/JPEGImages/*.jpg          # VOCtrainval_03-May-2010.tar
    VOCdevkit/VOC2010/trainval_merged.json      # the PASCAL in Detail annotations

The JSON (the format of the Detail API) has ``images`` (``image_id``, ``file_name``, ``height``, ``width``,
``phase``), ``categories`` (``category_id``, ``name``; ids are PASCAL-Context labels.txt ids) and
``annos_segmentation`` (``image_id``, ``category_id``, ``segmentation`` as COCO RLE). An image's class map paints
its annotations in file order, later ones over earlier ones, as the Detail API's ``getMask`` does.

Output: ``VOCdevkit/VOC2010/annotations_detectron2/pc59_val/<image>.png`` for the images of phase "val", uint8:
the 59 classes numbered 0..58 in PASCAL-Context id order (``esc_net/data/class_names/pascal_context_59.txt``),
and 255 = ignore for unannotated pixels and for the other PASCAL-Context classes.
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from esc_net.data.class_names import load_class_names
from esc_net.data.paths import dataset_root
from esc_net.data.prepare.common import (
    ConversionJob,
    ConversionStats,
    LabelMapping,
    add_workers_argument,
    check_class_names,
    require_dir,
    require_file,
    run_conversion,
)
from esc_net.utils.image_writers import write_label_png

BENCHMARK = "pascal_context_59"
VOC_DOWNLOAD = "VOCtrainval_03-May-2010.tar (http://host.robots.ox.ac.uk/pascal/VOC/voc2010/)"
JSON_DOWNLOAD = "trainval_merged.json (https://codalabuser.blob.core.windows.net/public/trainval_merged.json)"
_REQUIRED_KEYS = {
    "images": ("image_id", "file_name", "height", "width", "phase"),
    "categories": ("category_id", "name"),
    "annos_segmentation": ("image_id", "category_id", "segmentation"),
}


def context_ids() -> List[int]:
    """PASCAL-Context (labels.txt) id of each PC-59 class: its position in the 459-class list, plus one."""
    full = load_class_names("pascal_context_459")
    return [full.index(name) + 1 for name in load_class_names(BENCHMARK)]


def load_detail_json(path: Path) -> dict:
    """The Detail-API annotation file, checked for the lists and keys this script reads."""
    with open(require_file(path, "PASCAL in Detail annotations", JSON_DOWNLOAD)) as f:
        data = json.load(f)
    for section, keys in _REQUIRED_KEYS.items():
        entries = data.get(section) if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a top-level list {section!r} (Detail API format)")
        missing = sorted({k for entry in entries for k in keys if k not in entry})
        if missing:
            raise ValueError(f"{path}: entries of {section!r} lack the keys {missing}")
    return data


def check_categories(categories: Sequence[dict], source: str) -> None:
    """The JSON's names of our 59 category ids must be ours."""
    names: Dict[int, str] = {c["category_id"]: c["name"] for c in categories}
    ids = context_ids()
    absent = [i for i in ids if i not in names]
    if absent:
        raise ValueError(f"{source}: category ids {absent} of PASCAL-Context-59 are not among its categories")
    ours = f"esc_net/data/class_names/{BENCHMARK}.txt"
    check_class_names([names[i] for i in ids], load_class_names(BENCHMARK), source, ours)


def paint_class_map(height: int, width: int, category_ids: Sequence[int], rles: Sequence[dict]) -> np.ndarray:
    """Category-id map [H, W] (int64, 0 = unannotated): each pixel takes its last covering annotation.

    Args:
        category_ids: N category ids, in annotation order.
        rles: the N COCO RLE masks (compressed, or uncompressed with a list of counts) of size [H, W].
    """
    if not rles:
        return np.zeros((height, width), dtype=np.int64)
    rles = [mask_utils.frPyObjects(r, height, width) if isinstance(r["counts"], list) else r for r in rles]
    masks = mask_utils.decode(rles)  # [H, W, N] uint8
    if masks.shape[:2] != (height, width):
        raise ValueError(f"RLE masks of size {masks.shape[:2]} do not match the image size {(height, width)}")
    # Index of the last annotation covering each pixel: first hit in reversed order.
    last = masks.shape[2] - 1 - np.argmax(masks[:, :, ::-1], axis=2)
    return np.where(masks.any(axis=2), np.asarray(category_ids, dtype=np.int64)[last], 0)


def convert_one(job: ConversionJob) -> None:
    _, (dst,), (source, height, width, category_ids, rles, mapping) = job
    write_label_png(dst, mapping(paint_class_map(height, width, category_ids, rles), source))


def prepare_pascal_context_59(root: Optional[str] = None, workers: int = 1) -> ConversionStats:
    """Converts the val images' annotations; returns the written/skipped counts."""
    voc = dataset_root(root) / "VOCdevkit" / "VOC2010"
    json_path = voc / "trainval_merged.json"
    data = load_detail_json(json_path)
    check_categories(data["categories"], str(json_path))
    image_dir = require_dir(voc / "JPEGImages", "VOC2010 images", VOC_DOWNLOAD)
    val_images = [img for img in data["images"] if img["phase"] == "val"]
    if not val_images:
        raise ValueError(f"{json_path} lists no image of phase 'val'")
    annotations = defaultdict(list)
    for ann in data["annos_segmentation"]:
        annotations[ann["image_id"]].append(ann)

    max_id = max(c["category_id"] for c in data["categories"])
    mapping = LabelMapping(max_id + 1, context_ids())
    out_dir = voc / "annotations_detectron2" / "pc59_val"
    jobs = []
    for img in val_images:
        anns = annotations[img["image_id"]]
        payload = (
            f"{json_path} (annotations of {img['file_name']})",
            img["height"],
            img["width"],
            [a["category_id"] for a in anns],
            [a["segmentation"] for a in anns],
            mapping,
        )
        out = out_dir / (Path(img["file_name"]).stem + ".png")
        jobs.append(ConversionJob((image_dir / img["file_name"],), (out,), payload))
    return run_conversion(jobs, convert_one, "PASCAL-Context-59 val", VOC_DOWNLOAD, workers)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workers_argument(parser)


def run(args: argparse.Namespace) -> ConversionStats:
    return prepare_pascal_context_59(args.root, args.workers)
