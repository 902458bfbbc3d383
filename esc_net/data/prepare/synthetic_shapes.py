"""Generates the Synthetic Shapes dataset (the embedded default) under $DETECTRON2_DATASETS/synthetic_shapes.

    esc-net-prepare synthetic_shapes                 # 240 train + 60 val images of 96x96
    esc-net-prepare synthetic_shapes --num-train 1000 --image-size 128 --overwrite

The layout, the classes and the rules for re-runs are described in esc_net/data/synthetic_shapes.py.
"""

import argparse

from esc_net.data.synthetic_shapes import (
    DEFAULT_IGNORE_BAND,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MAX_SHAPES,
    DEFAULT_NUM_IMAGES,
    generate_synthetic_shapes,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_IMAGES["train"])
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_IMAGES["val"])
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="side of the square images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shapes", type=int, default=DEFAULT_MAX_SHAPES, help="shapes per image: 1 to this")
    parser.add_argument(
        "--ignore-band",
        type=int,
        default=DEFAULT_IGNORE_BAND,
        help="pixels on each side of a class boundary labelled 255 (ignore); 0 = none",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="regenerate even if a dataset (with the same or other options) is already there",
    )


def run(args: argparse.Namespace) -> str:
    return generate_synthetic_shapes(
        root=args.root,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        seed=args.seed,
        max_shapes=args.max_shapes,
        ignore_band=args.ignore_band,
        overwrite=args.overwrite,
    )
