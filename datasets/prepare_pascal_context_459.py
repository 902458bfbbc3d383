#!/usr/bin/env python
"""Prepares PASCAL-Context-459 (PC-459): ``python datasets/prepare_pascal_context_459.py [--root DIR] [options]``.

The same command as ``esc-net-prepare pascal_context_459``; ``--help`` describes it. The code is in
esc_net/data/prepare/pascal_context_459.py.
"""
from esc_net.data.prepare.cli import main

if __name__ == "__main__":
    main(dataset="pascal_context_459")
