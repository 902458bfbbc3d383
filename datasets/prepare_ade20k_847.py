#!/usr/bin/env python
"""Prepares ADE20K-full (A-847): ``python datasets/prepare_ade20k_847.py [--root DIR] [options]``.

The same command as ``esc-net-prepare ade20k_847``; ``--help`` describes it. The code is in
esc_net/data/prepare/ade20k_847.py.
"""
from esc_net.data.prepare.cli import main

if __name__ == "__main__":
    main(dataset="ade20k_847")
