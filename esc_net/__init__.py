"""ESC-Net (Effective SAM Combination for open-vocabulary semantic segmentation) as a Detectron2 plugin.

Importing the package registers the benchmark datasets with Detectron2 and nothing heavier: the model code (and
with it open_clip, segment_anything and timm) loads when a config is built with :func:`add_esc_net_config`,
which registers the ``ESCNet`` meta-architecture, or when :class:`ESCNetPredictor` is first used.
"""
from . import data  # noqa: F401  (registers the datasets)
from .config import add_esc_net_config, merge_config_file

__all__ = ["ESCNetPredictor", "add_esc_net_config", "merge_config_file"]


def __getattr__(name: str):
    # PEP 562: ``esc_net.ESCNetPredictor`` imports the model code on first use only.
    if name == "ESCNetPredictor":
        from .predictor import ESCNetPredictor

        return ESCNetPredictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
