#!/usr/bin/env python
"""The laboratory's CLIP alone as a segmenter, with each dense last layer: mIoU of the plain correlation.

Every pixel takes the class whose text embedding has the highest cosine with the pixel's dense CLIP feature (the
correlation ESC-Net starts from, bilinearly upsampled; no ESC-Block, no decoder, no segmentation training), for the
pre-trained tiny CLIP of scripts/run_default.sh, on the three zero-shot benchmarks of the Synthetic Shapes world,
scored by the project's evaluator. It measures how well the image-level pre-training aligned the patch features
with the names, for CLIP's ordinary last block ("attention") and CAT-Seg's dense layer ("value").

    .venv/bin/python benchmarks/benchmark_lab_clip_dense.py [--clip output/pretrained/clip_tiny_shapes.pt]
"""

import argparse
import os

import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from tabulate import tabulate
from torch.nn import functional as F

from esc_net.config import load_config
from esc_net.data import SemanticSegmentationMapper, get_dataset_vocabulary
from esc_net.evaluation import OpenVocabSemSegEvaluator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "esc_net_tiny_shapes.yaml")
BENCHMARKS = ("synthetic_shapes_val", "synthetic_shapes_val_unseen", "synthetic_shapes_val_all")


@torch.no_grad()
def clip_only_miou(model, dataset: str, mapper_cfg) -> dict:
    """The evaluator's results for the plain correlation's argmax on ``dataset``."""
    vocabulary = get_dataset_vocabulary(dataset)
    text = model.clip.encode_text(vocabulary)
    mapper = SemanticSegmentationMapper(mapper_cfg, is_train=False, dataset_name=dataset)
    evaluator = OpenVocabSemSegEvaluator(dataset, distributed=False)
    evaluator.reset()
    for record in DatasetCatalog.get(dataset):
        x = mapper(record)
        image = F.interpolate(model._normalize(x["image"])[None], size=(model.image_size,) * 2, mode="bilinear")
        dense, _ = model.clip.encode_image(image)
        corr = F.interpolate(model.correlation(dense, text), size=(x["height"], x["width"]), mode="bilinear")
        evaluator.process([x], [{"sem_seg_labels": corr[0].argmax(dim=0)}])
    return evaluator.evaluate()["sem_seg"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default=os.path.join(ROOT, "output", "pretrained", "clip_tiny_shapes.pt"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for layer in ("attention", "value"):
        cfg = load_config(
            CONFIG,
            [
                "MODEL.ESC_NET.CLIP_PRETRAINED",
                args.clip,
                "MODEL.ESC_NET.SAM_CHECKPOINT",
                "",
                "MODEL.ESC_NET.ALLOW_RANDOM_SAM",
                "True",
                "MODEL.ESC_NET.CLIP_DENSE_LAYER",
                layer,
            ],
        )
        model = build_model(cfg).eval()
        results = {d: clip_only_miou(model, d, cfg) for d in BENCHMARKS}
        rows.append(
            [layer]
            + [
                f"{results[d][k]:.1f}"
                for d, k in (
                    ("synthetic_shapes_val", "mIoU"),
                    ("synthetic_shapes_val_unseen", "mIoU-unseen"),
                    ("synthetic_shapes_val_all", "mIoU-seen"),
                    ("synthetic_shapes_val_all", "mIoU-unseen"),
                )
            ]
        )
    print(
        tabulate(
            rows, headers=["dense layer", "seen mIoU", "unseen: unseen", "all: seen", "all: unseen"], tablefmt="pipe"
        )
    )


if __name__ == "__main__":
    main()
