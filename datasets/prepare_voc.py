#!/usr/bin/env python
"""Prepares PASCAL VOC 2012 val (PAS-20 and PAS-20b): ``python datasets/prepare_voc.py [--root DIR] [options]``.

The same command as ``esc-net-prepare voc``; ``--help`` describes it. The code is in
esc_net/data/prepare/voc.py.
"""
from esc_net.data.prepare.cli import main

if __name__ == "__main__":
    main(dataset="voc")
