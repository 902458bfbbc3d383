"""ESC-Net's ONNX runtime: an exported model (``esc-net-export``) run on ONNX Runtime, without PyTorch.

This package imports no PyTorch, Detectron2 or open_clip, at import or in use: numpy, and, when a predictor is
built, onnxruntime and tokenizers (``pip install 'esc_net[deploy]'``). The
torch-free rules that the PyTorch model and the runtime share live here too, so that both read a vocabulary, build
prompts and lay out sliding windows alike: :mod:`esc_net_runtime.vocabulary_rules`, :mod:`esc_net_runtime.prompts`,
:mod:`esc_net_runtime.sliding_window`.
"""

from esc_net_runtime.predictor import ONNXPredictor

__all__ = ["ONNXPredictor"]
