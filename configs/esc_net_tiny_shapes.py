"""The embedded default as a Detectron2 LazyConfig: esc_net_tiny_shapes.yaml in LazyConfig form
(:func:`esc_net.lazy_config.lazy_config`): the tiny ESC-Net from the model zoo's pre-trained tiny CLIP, tiny SAM and
aligned SAM projection (docs/model_zoo.md), trained on the seen classes of the Synthetic Shapes world, on a CPU:

    python tools/lazyconfig_train_net.py --config-file configs/esc_net_tiny_shapes.py

(Detectron2's script, in ``tools/`` of a Detectron2 checkout.) Like esc_net_vitb_384.py, it is Python code that
runs when loaded.
"""

import os

from esc_net.config import load_config
from esc_net.lazy_config import lazy_config

_parts = lazy_config(load_config(os.path.join(os.path.dirname(__file__), "esc_net_tiny_shapes.yaml")))
model, dataloader, optimizer = _parts["model"], _parts["dataloader"], _parts["optimizer"]
lr_multiplier, train = _parts["lr_multiplier"], _parts["train"]
