"""ESC-Net with CLIP ViT-B/16 at 384x384 as a Detectron2 LazyConfig: esc_net_vitb_384.yaml in LazyConfig form
(:func:`esc_net.lazy_config.lazy_config`), trained on COCO-Stuff-171 and evaluated on A-847, the first benchmark
of the YAML config. Run it with Detectron2's lazy-config training script:

    python tools/lazyconfig_train_net.py --config-file configs/esc_net_vitb_384.py --num-gpus 4 \\
        model.blocks.sam_checkpoint=/path/to/sam_vit_b_01ec64.pth

(``tools/`` of a Detectron2 checkout). Every value comes from the YAML config and the defaults of
esc_net/config.py, where each is documented; any of them can be changed here or on the command line
(``model.blocks.prompts.num_points=4``). Unlike the YAML configs, a LazyConfig file is Python code: loading it
runs it, so load only files you trust.
"""

import os

from esc_net.config import load_config
from esc_net.lazy_config import lazy_config

_parts = lazy_config(load_config(os.path.join(os.path.dirname(__file__), "esc_net_vitb_384.yaml")))
model, dataloader, optimizer = _parts["model"], _parts["dataloader"], _parts["optimizer"]
lr_multiplier, train = _parts["lr_multiplier"], _parts["train"]
