"""What both pre-training loops share: image batches, the schedule, saving."""

import json
import logging
import math
import os
from typing import Dict

import numpy as np
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from esc_net.utils.checkpoint import atomic_write

logger = logging.getLogger("esc_net.pretrain")


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """[B, S, S, 3] uint8 RGB -> [B, 3, S, S] float32 normalised with the statistics ESC-Net's CLIP encoder uses
    for a CLIP defined by a model config (open_clip's defaults, OpenAI's mean and standard deviation)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def random_dihedral(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator):
    """The same random flip / 90-degree rotation of every image [B, S, S, ...] and mask [B, ..., S, S]: the classes
    of the world do not depend on orientation."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    images = np.rot90(images, k, axes=(1, 2))
    masks = np.rot90(masks, k, axes=(-2, -1)) if masks is not None else None
    if flip:
        images = images[:, :, ::-1]
        masks = masks[..., ::-1] if masks is not None else None
    return np.ascontiguousarray(images), (np.ascontiguousarray(masks) if masks is not None else None)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear warm-up over ``warmup`` steps, then a cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def save_state_dict(state: Dict[str, torch.Tensor], path: str) -> None:
    """``torch.save`` of a plain state dict, written atomically (a kill never leaves a partial file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, f)


def save_report(report: Dict, path: str) -> None:
    with atomic_write(path, "w") as f:
        json.dump(report, f, indent=2)
    logger.info("wrote %s", path)
