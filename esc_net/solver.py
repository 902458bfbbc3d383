"""Optimizer for ESC-Net: per-module learning-rate multipliers and full-model gradient clipping.

The pre-trained parts (CLIP, and SAM's prompt encoder and two-way transformer inside every ESC-Block) train at
``BASE_LR * SOLVER.CLIP_MULTIPLIER`` and ``BASE_LR * SOLVER.SAM_MULTIPLIER`` (the paper: 2e-6 against 2e-4 for
the new modules). Gradient clipping of type ``"full_model"`` clips the norm of all gradients together, which is
what the paper's codebase does; ``"value"`` and ``"norm"`` keep Detectron2's per-parameter meaning.
"""
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


def lr_multiplier(param_name: str, cfg: CfgNode) -> float:
    """The LR multiplier of one parameter of an ESCNet model, from its name."""
    name = param_name[len("module."):] if param_name.startswith("module.") else param_name
    if name.startswith(CLIP_PREFIX):
        return cfg.SOLVER.CLIP_MULTIPLIER
    if any(part in name for part in SAM_PRETRAINED_PARTS):
        return cfg.SOLVER.SAM_MULTIPLIER
    return 1.0


def _with_gradient_clipping(cfg: CfgNode, optimizer_cls: type) -> type:
    clip_cfg = cfg.SOLVER.CLIP_GRADIENTS
    if clip_cfg.ENABLED and clip_cfg.CLIP_TYPE == "full_model":

        def clip_all(params):
            torch.nn.utils.clip_grad_norm_(params, clip_cfg.CLIP_VALUE, clip_cfg.NORM_TYPE)

        return _generate_optimizer_class_with_gradient_clipping(optimizer_cls, global_clipper=clip_all)
    return maybe_add_gradient_clipping(cfg, optimizer_cls)


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Builds the optimizer named by ``SOLVER.OPTIMIZER`` ("ADAMW" or "SGD") over the trainable parameters."""
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        lr_factor_func=lambda name: lr_multiplier(name, cfg),
    )
    kind = cfg.SOLVER.OPTIMIZER.upper()
    if kind == "ADAMW":
        return _with_gradient_clipping(cfg, torch.optim.AdamW)(params, lr=cfg.SOLVER.BASE_LR)
    if kind == "SGD":
        return _with_gradient_clipping(cfg, torch.optim.SGD)(
            params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV
        )
    raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {cfg.SOLVER.OPTIMIZER!r}")
