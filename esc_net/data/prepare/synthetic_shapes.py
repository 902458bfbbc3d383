#!/usr/bin/env python
"""Generates the Synthetic Shapes dataset (the embedded default) under $DETECTRON2_DATASETS/synthetic_shapes.

    python datasets/generate_synthetic_shapes.py                 # 240 train + 60 val images of 96x96
    python datasets/generate_synthetic_shapes.py --num-train 1000 --image-size 128 --overwrite

The layout, the classes and the rules for re-runs are described in esc_net/data/synthetic_shapes.py.
"""
import argparse

from detectron2.utils.logger import setup_logger

from esc_net.data.synthetic_shapes import (
    DEFAULT_IGNORE_BAND,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MAX_SHAPES,
    DEFAULT_NUM_IMAGES,
    generate_synthetic_shapes,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None,
                        help="datasets root (default: $DETECTRON2_DATASETS, else ./datasets)")
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_IMAGES["train"])
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_IMAGES["val"])
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="side of the square images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shapes", type=int, default=DEFAULT_MAX_SHAPES, help="shapes per image: 1 to this")
    parser.add_argument("--ignore-band", type=int, default=DEFAULT_IGNORE_BAND,
                        help="pixels on each side of a class boundary labelled 255 (ignore); 0 = none")
    parser.add_argument("--overwrite", action="store_true",
                        help="regenerate even if a dataset (with the same or other options) is already there")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logger(name="esc_net")
    generate_synthetic_shapes(
        root=args.root,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        seed=args.seed,
        max_shapes=args.max_shapes,
        ignore_band=args.ignore_band,
        overwrite=args.overwrite,
    )


if __name__ == "__main__":
    main()
