#!/usr/bin/env python
"""Trains and evaluates ESC-Net with Detectron2 (the ``esc-net-train`` command); see ``esc_net/engine.py``.

python train_net.py --config-file configs/esc_net_vitb_384.yaml --num-gpus 4
python train_net.py --config-file configs/esc_net_vitb_384.yaml --eval-only MODEL.WEIGHTS model.pth
"""

from esc_net.engine import main

if __name__ == "__main__":
    main()
