"""Per-pixel segmentation loss on class logits."""
import torch
from torch.nn import functional as F


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_value: int, kind: str = "bce") -> torch.Tensor:
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
    if kind == "ce":
        return F.cross_entropy(logits, targets, ignore_index=ignore_value, reduction="sum") / valid.sum().clamp(min=1)
    if kind != "bce":
        raise ValueError(f"MODEL.ESC_NET.LOSS must be 'bce' or 'ce', got {kind!r}")
    one_hot = F.one_hot(targets.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).to(logits.dtype)
    per_pixel = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none").mean(dim=1)
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)
