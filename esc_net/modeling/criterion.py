"""ESC-Net's training losses: a per-pixel segmentation loss on the final logits and, with deep supervision, on
every ESC-Block's refined correlation map."""

from typing import Dict, Sequence

import torch
from torch.nn import functional as F

from esc_net.utils.arguments import check_choice

# The losses of MODEL.ESC_NET.LOSS (see segmentation_loss).
LOSSES = ("bce", "ce")


def segmentation_loss(
    logits: torch.Tensor, targets: torch.Tensor, ignore_value: int, kind: str = "bce"
) -> torch.Tensor:
    """
    Args:
        logits: [B, N, H, W] one logit map per class, at the resolution of ``targets``.
        targets: [B, H, W] long class ids in [0, N), or ``ignore_value``.
        ignore_value: label of pixels that do not contribute.
        kind: "bce" (per-pixel binary cross-entropy against one-hot targets, averaged over the valid pixels and
            the classes) or "ce" (softmax cross-entropy over the classes).

    Returns:
        The scalar loss. It is zero (and still differentiable) when a batch holds no valid pixel.
    """
    num_classes = logits.shape[1]
    valid = targets != ignore_value
    bad = valid & ((targets < 0) | (targets >= num_classes))
    if bad.any():
        raise ValueError(
            f"label values {sorted(targets[bad].unique().tolist())[:10]} are outside [0, {num_classes}) and are "
            f"not the ignore value {ignore_value}: the dataset's labels do not match the vocabulary of "
            f"{num_classes} classes"
        )
    check_choice("MODEL.ESC_NET.LOSS", kind, LOSSES)
    if kind == "ce":
        return F.cross_entropy(logits, targets, ignore_index=ignore_value, reduction="sum") / valid.sum().clamp(min=1)
    one_hot = F.one_hot(targets.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).to(logits.dtype)
    per_pixel = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none").mean(dim=1)
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)


def esc_net_losses(
    logits: torch.Tensor,
    block_maps: Sequence[torch.Tensor],
    targets: torch.Tensor,
    *,
    ignore_value: int,
    kind: str,
    block_loss_weight: float,
) -> Dict[str, torch.Tensor]:
    """The losses of one training step.

    Args:
        logits: [B, N, h', w'] the decoder's class logits.
        block_maps: the refined correlation map of every ESC-Block, [B, N, h, w] each (used when
            ``block_loss_weight`` > 0).
        targets: [B, H, W] long class ids, or ``ignore_value``.
        kind: see :func:`segmentation_loss`.
        block_loss_weight: weight of the loss on each block's map (0 = no deep supervision).

    Returns:
        ``{"loss_sem_seg": ...}``, plus ``"loss_block<i>"`` per block with deep supervision.
    """
    full_size = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    losses = {"loss_sem_seg": segmentation_loss(full_size, targets, ignore_value, kind)}
    if block_loss_weight <= 0:
        return losses
    # Deep supervision of every block's correlation map: the next block's pseudo prompts are drawn from it, and
    # prompt points are not differentiable, so without this the map would learn only through the pseudo mask.
    # Computed at the decoder's output resolution to keep its memory small.
    size = logits.shape[-2:]
    small_targets = F.interpolate(targets[:, None].float(), size=size, mode="nearest")[:, 0].long()
    for i, block_map in enumerate(block_maps):
        block_map = F.interpolate(block_map, size=size, mode="bilinear", align_corners=False)
        losses[f"loss_block{i}"] = block_loss_weight * segmentation_loss(block_map, small_targets, ignore_value, kind)
    return losses
