#!/usr/bin/env python
"""Prepares COCO-Stuff (171 classes): ``python datasets/prepare_coco_stuff.py [--root DIR] [options]``.

The same command as ``esc-net-prepare coco_stuff``; ``--help`` describes it. The code is in
esc_net/data/prepare/coco_stuff.py.
"""
from esc_net.data.prepare.cli import main

if __name__ == "__main__":
    main(dataset="coco_stuff")
