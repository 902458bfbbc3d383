"""ESC-Net (Effective SAM Combination for open-vocabulary semantic segmentation) as a Detectron2 plugin.

Importing the package registers the ``ESCNet`` meta-architecture and the benchmark datasets with Detectron2.
"""
from . import data, modeling  # noqa: F401  (registrations)
from .config import add_esc_net_config
from .predictor import ESCNetPredictor

__all__ = ["ESCNetPredictor", "add_esc_net_config"]
