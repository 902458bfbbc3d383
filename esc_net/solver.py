"""Optimizer for ESC-Net: per-module learning-rate multipliers and full-model gradient clipping.

The pre-trained parts (CLIP, and SAM's prompt encoder and two-way transformer inside every ESC-Block) train at
``BASE_LR * SOLVER.CLIP_MULTIPLIER`` and ``BASE_LR * SOLVER.SAM_MULTIPLIER`` (the paper: 2e-6 against 2e-4 for
the new modules). Gradient clipping of type ``"full_model"`` clips the norm of all gradients together, which is
what the paper's codebase does; ``"value"`` and ``"norm"`` keep Detectron2's per-parameter meaning. Detectron2's
own ``build_optimizer`` knows neither (it refuses ``"full_model"``), so a trainer of one's own takes
:func:`build_optimizer` from here; LazyConfig files use :func:`optimizer_params` and :func:`full_model_clipped`.

The pre-trained parts are found by what they are, not by their names: the model's
:class:`~esc_net.modeling.VisionLanguageBackbone` (all its parameters) and every :class:`~esc_net.modeling.SAMBlock`'s
``pretrained_modules()``.
"""

from typing import Dict, Iterable, List

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import (
    _generate_optimizer_class_with_gradient_clipping,
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
)
from torch import nn

from esc_net.modeling.backbone import VisionLanguageBackbone
from esc_net.modeling.sam_block import SAMBlock


def lr_multipliers(model: nn.Module, clip_multiplier: float, sam_multiplier: float) -> Dict[str, float]:
    """``{parameter name: LR multiplier}`` for the parameters of ``model``'s pre-trained parts (names as
    ``model.named_parameters()`` gives them); the others train at the base rate."""
    factor_of = {}
    for module in model.modules():
        if isinstance(module, VisionLanguageBackbone):
            parts, factor = [module], clip_multiplier
        elif isinstance(module, SAMBlock):
            parts, factor = module.pretrained_modules(), sam_multiplier
        else:
            continue
        factor_of.update({id(p): factor for part in parts for p in part.parameters()})
    return {name: factor_of[id(p)] for name, p in model.named_parameters() if id(p) in factor_of}


def optimizer_params(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    clip_multiplier: float,
    sam_multiplier: float,
) -> List[dict]:
    """Detectron2's ``get_default_optimizer_params`` of ``model`` (the trainable parameters, grouped by learning
    rate and weight decay), with the backbone's learning rate ``clip_multiplier`` times the base rate and that of
    SAM's pre-trained parts ``sam_multiplier`` times."""
    multipliers = lr_multipliers(model, clip_multiplier, sam_multiplier)
    return get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay=weight_decay,
        weight_decay_norm=weight_decay_norm,
        lr_factor_func=lambda name: multipliers.get(name, 1.0),
    )


def _full_model_clipping(optimizer_cls: type, max_norm: float, norm_type: float) -> type:
    """``optimizer_cls`` whose ``step`` first clips the norm of all gradients together to ``max_norm``."""

    def clip_all(params):
        torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)

    return _generate_optimizer_class_with_gradient_clipping(optimizer_cls, global_clipper=clip_all)


def full_model_clipped(
    name: str, params: Iterable, *, max_norm: float, norm_type: float = 2.0, **kwargs
) -> torch.optim.Optimizer:
    """``torch.optim.<name>(params, **kwargs)`` with full-model gradient clipping (``CLIP_TYPE "full_model"``),
    for LazyConfig files, whose optimizer is a call."""
    return _full_model_clipping(getattr(torch.optim, name), max_norm, norm_type)(params, **kwargs)


def _with_gradient_clipping(cfg: CfgNode, optimizer_cls: type) -> type:
    clip_cfg = cfg.SOLVER.CLIP_GRADIENTS
    if clip_cfg.ENABLED and clip_cfg.CLIP_TYPE == "full_model":
        return _full_model_clipping(optimizer_cls, clip_cfg.CLIP_VALUE, clip_cfg.NORM_TYPE)
    return maybe_add_gradient_clipping(cfg, optimizer_cls)


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Builds the optimizer named by ``SOLVER.OPTIMIZER`` ("ADAMW" or "SGD") over the trainable parameters."""
    params = optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        clip_multiplier=cfg.SOLVER.CLIP_MULTIPLIER,
        sam_multiplier=cfg.SOLVER.SAM_MULTIPLIER,
    )
    kind = cfg.SOLVER.OPTIMIZER.upper()
    if kind == "ADAMW":
        return _with_gradient_clipping(cfg, torch.optim.AdamW)(params, lr=cfg.SOLVER.BASE_LR)
    if kind == "SGD":
        return _with_gradient_clipping(cfg, torch.optim.SGD)(
            params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV
        )
    raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {cfg.SOLVER.OPTIMIZER!r}")
