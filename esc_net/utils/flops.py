"""FLOPs of ESC-Net per stage, counted with fvcore on the real inference forward pass.

The count follows Detectron2's ``tools/analyze_model.py``: ``detectron2.utils.analysis.FlopCountAnalysis`` (fvcore's
jit-trace counter with Detectron2's list-of-dicts inputs and its list of ignored element-wise ops) traces one call
of the model, and one "flop" is one multiply-accumulate of a matrix product, convolution or einsum (plus fvcore's
small counts for normalisations and bilinear resizing). Element-wise ops, softmax and reductions count zero.

What fvcore does not count by itself and this module adds:

* ``aten::scaled_dot_product_attention`` (CLIP's attention through ``F.multi_head_attention_forward``, timm's
  Swin blocks, SAM's two-way attention): the two matrix products ``Q K^T`` and ``softmax(.) V``, i.e.
  ``L * S * (E + E_v)`` per batch element and head, counted in full whatever the mask (CLIP's causal text mask
  included).
* ``aten::baddbmm`` (SAM's image-to-token attention): the batched matrix product, as fvcore counts ``bmm``.

The Pseudo Prompt Generator is not traced: it holds no matrix product (a softmax, K-means over pixel coordinates:
comparisons and additions), so under this convention it is zero; it runs untraced because the tracer cannot
record its in-place boolean scatter. Its outputs enter the trace as constants, which changes no other count.

Stages are subtrees of the module tree (fvcore attributes an op to the module whose ``forward`` runs it and to
that module's parents). The backbone and its image tower are found through the backbone interface
(:class:`~esc_net.modeling.VisionLanguageBackbone`), whatever their names:

==============  ==============================================================================================
clip_image      the backbone's ``image_tower`` (CLIP's ``visual``)
clip_text       the rest of the backbone: its text tower; once per forward, for the vocabulary
ppg             every block's ``prompt_generator`` (zero, see above)
sam             every block's ``sam`` (SAM's prompt encoder and two-way transformer, the CLIP projections)
vlf_image       every block's ``vlf.image_guidance`` (the fusion layer and the Swin blocks)
vlf_text        the rest of every block's ``vlf``: linear attention across classes (its projections, class sums
                and outputs) and its MLP
decoder         the upsampling decoder
other           what runs outside those modules: the correlation, the backbone's output projections (run in
                ``CLIPEncoder``'s methods), the first correlation embedding, the blocks' merges and heads, the
                resizing of views and scores
==============  ==============================================================================================
"""

import contextlib
from collections import Counter, OrderedDict
from typing import Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np
import torch
from detectron2.utils.analysis import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

from esc_net.modeling.backbone import VisionLanguageBackbone

__all__ = [
    "STAGES",
    "count_flops",
    "count_flops_per_stage",
    "count_parameters_per_stage",
    "baddbmm_flop_jit",
    "sdpa_flop_jit",
    "split_by_stage",
    "weights_by_module",
]

STAGES = ("clip_image", "clip_text", "ppg", "sam", "vlf_image", "vlf_text", "decoder", "other")

# TracingAdapter (inside Detectron2's FlopCountAnalysis) holds the model under this name.
_ROOT = "model"


def sdpa_flop_jit(inputs: List, outputs: List) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``.

    q: [..., L, E], k: [..., S, E], v: [..., S, E_v] (leading dims broadcast). Counts the multiply-accumulates of
    ``Q K^T`` (L * S * E) and of the weights times V (L * S * E_v) for every leading index.
    """
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = int(np.prod(q[:-2], dtype=np.int64))
    length, source = q[-2], k[-2]
    return batch * length * source * (q[-1] + v[-1])


def baddbmm_flop_jit(inputs: List, outputs: List) -> int:
    """fvcore handle for ``aten::baddbmm(input, batch1 [b, n, k], batch2 [b, k, m])``: b * n * k * m (the added
    input is element-wise and counts zero, as for ``addmm``)."""
    (batch, rows, inner), columns = get_shape(inputs[1]), get_shape(inputs[2])[-1]
    return batch * rows * inner * columns


class _Untraced(nn.Module):
    """Runs a module with jit tracing paused: its ops are left out of the graph and its outputs become constants.

    Only for modules without parameters whose outputs carry no gradient (the Pseudo Prompt Generator)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        return self._untraced(self.module, *args)

    def class_posterior(self, *args):
        """The generator's class posterior (the "posterior" mask's), untraced too: element-wise, no matrix product."""
        return self._untraced(self.module.class_posterior, *args)

    @staticmethod
    def _untraced(function, *args):
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return function(*args)
        finally:
            torch._C._set_tracing_state(state)


@contextlib.contextmanager
def _countable(model: nn.Module) -> Iterator[None]:
    """Prepares ``model`` for one trace and restores it afterwards.

    * no parameter requires a gradient: the tracer embeds tensors it cannot find in the state dict as constants,
      which it refuses for tensors that require grad, and CLIP's q/k/v projections are saved packed
      (``SplitQKVAttention``) rather than under their own names;
    * the prompt generators run untraced (see the module docstring);
    * the text-embedding cache is emptied, so that the trace runs the text tower.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    generators = [(block, block.prompt_generator) for block in model.blocks]
    was_training = model.training
    model.eval().requires_grad_(False)
    for block, generator in generators:
        block.prompt_generator = _Untraced(generator)
    backbone = _backbone(model)[1]
    backbone.clear_text_cache()
    try:
        yield
    finally:
        for block, generator in generators:
            block.prompt_generator = generator
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.train(was_training)
        backbone.clear_text_cache()


def count_flops(model: nn.Module, image: torch.Tensor, vocabulary: Sequence[str]) -> FlopCountAnalysis:
    """Traces one inference call of ESC-Net and returns the evaluated fvcore analysis (per module, per op).

    Args:
        model: an ``ESCNet``. Its training mode, ``requires_grad`` flags and modules are restored afterwards.
        image: [3, H, W] image (channels as ``INPUT.FORMAT``), on any device; it is processed as the model's
            inference does (one view for INFERENCE_MODE "whole", sliding windows plus a global view otherwise).
        vocabulary: the N class names scored.

    Returns:
        Detectron2's ``FlopCountAnalysis`` (module names start with ``"model."``), already traced.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"count_flops expects a [3, H, W] image, got shape {tuple(image.shape)}")
    inputs = [{"image": image, "height": image.shape[1], "width": image.shape[2], "vocabulary": list(vocabulary)}]
    with _countable(model):
        analysis = FlopCountAnalysis(model, inputs)
        analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
        analysis.set_op_handle("aten::baddbmm", baddbmm_flop_jit)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analysis.total()  # traces now, while the model is prepared
    return analysis


def _backbone(model: nn.Module) -> Tuple[str, VisionLanguageBackbone]:
    """The name and module of ``model``'s vision-language backbone."""
    for name, module in model.named_modules():
        if isinstance(module, VisionLanguageBackbone):
            return name, module
    raise ValueError(f"{type(model).__name__} holds no VisionLanguageBackbone")


def _tower_names(model: nn.Module) -> Tuple[str, str]:
    """The names, in ``model``, of its backbone and of the backbone's image tower."""
    name, backbone = _backbone(model)
    tower = next(n for n, m in backbone.named_modules() if m is backbone.image_tower)
    return name, f"{name}.{tower}"


def split_by_stage(subtree: Mapping[str, float], model: nn.Module, root: str = "") -> Dict[str, int]:
    """Groups per-module figures into :data:`STAGES`.

    Args:
        subtree: ``{module name: figure of the module and its submodules}``, with the ESC-Net at ``root`` (e.g.
            fvcore's ``by_module()``, or :func:`weights_by_module`).
        model: the ESC-Net (its blocks and backbone name the stages).
        root: the ESC-Net's name in ``subtree`` ("" when it is the root).

    Returns:
        ``{stage: figure}`` for every stage and ``"total"`` (``subtree[root]``); the stages add up to the total.
    """
    prefix = f"{root}." if root else ""

    def total(*names: str) -> float:
        return sum(subtree.get(prefix + name, 0) for name in names)

    blocks = [f"blocks.{i}" for i in range(len(model.blocks))]
    backbone, image_tower = _tower_names(model)
    stages = OrderedDict()
    stages["clip_image"] = total(image_tower)
    stages["clip_text"] = total(backbone) - stages["clip_image"]
    stages["ppg"] = total(*(f"{b}.prompt_generator" for b in blocks))
    stages["sam"] = total(*(f"{b}.sam" for b in blocks))
    stages["vlf_image"] = total(*(f"{b}.vlf.image_guidance" for b in blocks))
    # The class attention's sums and outputs are einsums run by the VLF block itself (it runs the text guidance in
    # two passes over chunks of classes): everything in a VLF block but its image guidance is text guidance.
    stages["vlf_text"] = total(*(f"{b}.vlf" for b in blocks)) - stages["vlf_image"]
    stages["decoder"] = total("decoder")
    # fvcore's einsum count is a float holding a whole number; every figure is returned as an int
    stages = OrderedDict((name, int(round(value))) for name, value in stages.items())
    grand_total = int(round(subtree[root]))
    stages["other"] = grand_total - sum(stages.values())
    stages["total"] = grand_total
    return stages


def count_flops_per_stage(model: nn.Module, image: torch.Tensor, vocabulary: Sequence[str]) -> Dict[str, int]:
    """FLOPs (multiply-accumulates, fvcore's convention) of one inference call, per stage.

    Args: as :func:`count_flops`.

    Returns:
        ``{stage: flops}`` for every name of :data:`STAGES` (see the module docstring), plus ``"total"``; the
        stages add up to the total exactly.
    """
    return split_by_stage(count_flops(model, image, vocabulary).by_module(), model, root=_ROOT)


def weights_by_module(model: nn.Module, trainable_only: bool = False) -> Counter:
    """``{module name: number of weights in it and its submodules}``, root "".

    Weights are the tensors of the state dict (what a checkpoint holds; CLIP's frozen key projections are
    buffers, see ``SplitQKVAttention``, and count here), or with ``trainable_only`` the parameters that require
    a gradient.
    """
    if trainable_only:
        named = [(name, p.numel()) for name, p in model.named_parameters() if p.requires_grad]
    else:
        named = [(name, t.numel()) for name, t in model.state_dict().items()]
    counts = Counter()
    for name, numel in named:
        parts = name.split(".")[:-1]  # the owning module's name and its parents'
        for depth in range(len(parts) + 1):
            counts[".".join(parts[:depth])] += numel
    return counts


def count_parameters_per_stage(model: nn.Module, trainable_only: bool = False) -> Dict[str, int]:
    """Weights per stage (see :func:`weights_by_module`), plus ``"total"``."""
    return split_by_stage(weights_by_module(model, trainable_only), model)
