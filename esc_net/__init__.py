"""ESC-Net (Effective SAM Combination for open-vocabulary semantic segmentation) as a Detectron2 plugin.

Importing the package registers the benchmark datasets with Detectron2 (importing Detectron2's data and modeling
packages) and nothing heavier: the model code (and with it open_clip, segment_anything and timm) loads when a
config is built with :func:`add_esc_net_config`, which registers the ``ESCNet`` meta-architecture, or when
:class:`ESCNetPredictor` is first used.
"""

import warnings

with warnings.catch_warnings():
    # fvcore's focal losses and detectron2.modeling's box-regression loss are compiled with torch.jit.script when
    # those modules are imported, and PyTorch 2.10+ warns that torch.jit.script is deprecated (a FutureWarning,
    # three times) on every command, --help included. ESC-Net uses none of them and a user cannot act on the
    # warning: it is silenced while these two imports run, and nowhere else.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    import detectron2.modeling  # noqa: F401
    import fvcore.nn  # noqa: F401

from esc_net import data  # noqa: F401,E402  (registers the datasets)
from esc_net.config import add_esc_net_config, merge_config_file  # noqa: E402

__all__ = ["ESCNetPredictor", "ONNXPredictor", "add_esc_net_config", "merge_config_file"]


def __getattr__(name: str):
    # PEP 562: ``esc_net.ESCNetPredictor`` imports the model code on first use only.
    if name == "ESCNetPredictor":
        from esc_net.predictor import ESCNetPredictor

        return ESCNetPredictor
    if name == "ONNXPredictor":
        # the predictor of an exported model, on ONNX Runtime (no PyTorch of its own: esc_net_runtime)
        from esc_net_runtime import ONNXPredictor

        return ONNXPredictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
