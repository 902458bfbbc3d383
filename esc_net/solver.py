"""Optimizer for ESC-Net: per-module learning-rate multipliers and full-model gradient clipping.

The pre-trained parts (CLIP, and SAM's prompt encoder and two-way transformer inside every ESC-Block) train at
``BASE_LR * SOLVER.CLIP_MULTIPLIER`` and ``BASE_LR * SOLVER.SAM_MULTIPLIER`` (the paper: 2e-6 against 2e-4 for
the new modules). Gradient clipping of type ``"full_model"`` clips the norm of all gradients together, which is
what the paper's codebase does; ``"value"`` and ``"norm"`` keep Detectron2's per-parameter meaning. Detectron2's
own ``build_optimizer`` knows neither (it refuses ``"full_model"``), so a trainer of one's own takes
:func:`build_optimizer` from here; LazyConfig files use :func:`lr_factors` and :func:`full_model_clipped`.
"""

import functools
from typing import Callable, Iterable

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import (
    _generate_optimizer_class_with_gradient_clipping,
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
)

# Parameter-name prefixes of the pre-trained parts, relative to the ESCNet meta-architecture.
CLIP_PREFIX = "clip."
SAM_PRETRAINED_PARTS = (".sam.prompt_encoder.", ".sam.transformer.")


def lr_multiplier(param_name: str, clip_multiplier: float, sam_multiplier: float) -> float:
    """The LR multiplier of one parameter of an ESCNet model, from its name."""
    name = param_name[len("module.") :] if param_name.startswith("module.") else param_name
    if name.startswith(CLIP_PREFIX):
        return clip_multiplier
    if any(part in name for part in SAM_PRETRAINED_PARTS):
        return sam_multiplier
    return 1.0


def lr_factors(clip_multiplier: float, sam_multiplier: float) -> Callable[[str], float]:
    """The ``lr_factor_func`` of Detectron2's ``get_default_optimizer_params`` for an ESCNet model."""
    return functools.partial(lr_multiplier, clip_multiplier=clip_multiplier, sam_multiplier=sam_multiplier)


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
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        lr_factor_func=lr_factors(cfg.SOLVER.CLIP_MULTIPLIER, cfg.SOLVER.SAM_MULTIPLIER),
    )
    kind = cfg.SOLVER.OPTIMIZER.upper()
    if kind == "ADAMW":
        return _with_gradient_clipping(cfg, torch.optim.AdamW)(params, lr=cfg.SOLVER.BASE_LR)
    if kind == "SGD":
        return _with_gradient_clipping(cfg, torch.optim.SGD)(
            params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV
        )
    raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {cfg.SOLVER.OPTIMIZER!r}")
