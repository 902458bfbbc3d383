#!/usr/bin/env python
"""Generates Synthetic Shapes (the default dataset): ``python datasets/generate_synthetic_shapes.py [options]``.

The same command as ``esc-net-prepare synthetic_shapes``; ``--help`` describes it. The code is in
esc_net/data/prepare/synthetic_shapes.py.
"""
from esc_net.data.prepare.cli import main

if __name__ == "__main__":
    main(dataset="synthetic_shapes")
