#!/usr/bin/env python
"""How the held-out mIoU of the embedded default moves when its vocabulary grows with distractor names.

The trained embedded default (configs/esc_net_tiny_shapes.yaml, checkpoint from scripts/run_default.sh) segments
the seen benchmark of the Synthetic Shapes world (its 21 class names) plus D distractor names (ADE20K-847 class
names, in file order, skipping any that shares a word with a shapes class). A pixel predicted as a distractor is wrong.
The mIoU is over the dataset's own classes only, from the confusion matrix accumulated over the split, so it is
comparable across D. Each MAX_CLASSES_PER_VIEW value given is evaluated in the same run (0 = every class refined;
K = only the K classes of highest CLIP correlation in each view are refined, the protocol of the benchmark
configs).

    .venv/bin/python benchmarks/benchmark_vocabulary_growth.py --distractors 0 50 200 800 --caps 0 10 171
"""

import argparse
import os
import time

import cv2
import numpy as np
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from tqdm import tqdm

import esc_net
from esc_net.data.class_names import load_class_names

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def distractor_names(shapes_classes, count):
    """The first ``count`` ADE20K-847 names that share no word with a shapes class."""
    words = {w for name in shapes_classes for w in name.lower().replace(",", " ").split()}
    pool = [n for n in load_class_names("ade20k_847") if not words & set(n.lower().replace(",", " ").split())]
    if count > len(pool):
        raise ValueError(f"only {len(pool)} distractor names are available, asked for {count}")
    return pool[:count]


def evaluate(predictor, dataset, vocabulary, num_true, ignore_label):
    """mIoU over the first ``num_true`` classes and the share of valid pixels predicted as a distractor."""
    predictor.set_vocabulary(vocabulary)
    confusion = np.zeros((num_true, len(vocabulary)), dtype=np.int64)
    for record in tqdm(dataset, desc=f"{len(vocabulary)} names", leave=False):
        image = cv2.imread(record["file_name"], cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read image {record['file_name']}")
        gt = cv2.imread(record["sem_seg_file_name"], cv2.IMREAD_UNCHANGED).astype(np.int64)
        pred = predictor(image)["sem_seg"].argmax(dim=0).cpu().numpy()
        valid = gt != ignore_label
        confusion += np.bincount(
            gt[valid] * len(vocabulary) + pred[valid], minlength=num_true * len(vocabulary)
        ).reshape(num_true, len(vocabulary))
    tp = np.diag(confusion[:, :num_true])
    iou = tp / (confusion.sum(axis=1) + confusion[:, :num_true].sum(axis=0) - tp)
    return 100 * float(np.mean(iou)), 100 * confusion[:, num_true:].sum() / confusion.sum()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=os.path.join(ROOT, "configs", "esc_net_tiny_shapes.yaml"))
    parser.add_argument("--weights", default=os.path.join(ROOT, "output", "esc_net_tiny_shapes", "model_final.pth"))
    parser.add_argument("--distractors", type=int, nargs="+", default=[0, 50, 200, 800])
    parser.add_argument(
        "--caps",
        type=int,
        nargs="+",
        default=None,
        help="MAX_CLASSES_PER_VIEW values to compare (default: the config's)",
    )
    parser.add_argument("--dataset", default="synthetic_shapes_val")
    args = parser.parse_args()
    if not os.path.isfile(args.weights):
        raise SystemExit(f"no checkpoint at {args.weights}: train the embedded default first (scripts/run_default.sh)")

    cfg = get_cfg()
    esc_net.add_esc_net_config(cfg)
    esc_net.merge_config_file(cfg, args.config_file)
    cfg.MODEL.WEIGHTS = args.weights
    caps = args.caps if args.caps is not None else [cfg.MODEL.ESC_NET.MAX_CLASSES_PER_VIEW]
    predictor = esc_net.ESCNetPredictor(cfg)
    metadata = MetadataCatalog.get(args.dataset)
    classes = list(metadata.stuff_classes)
    dataset = DatasetCatalog.get(args.dataset)

    print(f"{args.dataset}: {len(dataset)} images, {len(classes)} classes; weights {args.weights}")
    columns = [
        "distractors",
        "names",
        "MAX_CLASSES_PER_VIEW",
        f"mIoU ({len(classes)} classes)",
        "on a distractor",
        "s/image",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|---:|---:|---:|---:|---:|---:|")
    for cap in caps:
        predictor.model.inference = predictor.model.inference.replace(max_classes_per_view=cap)
        for count in args.distractors:
            vocabulary = classes + distractor_names(classes, count)
            start = time.perf_counter()
            miou, lost = evaluate(predictor, dataset, vocabulary, len(classes), metadata.ignore_label)
            seconds = (time.perf_counter() - start) / len(dataset)
            print(f"| {count} | {len(vocabulary)} | {cap} | {miou:.1f} | {lost:.1f}% | {seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
