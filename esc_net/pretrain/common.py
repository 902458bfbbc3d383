"""What both pre-training loops share: image batches, the schedule, saving."""

import json
import logging
import math
import os
import time
from typing import Callable, Dict, NamedTuple, Optional

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


class Schedule(NamedTuple):
    """What both pre-training loops share of their settings (AdamW with a linear warm-up and a cosine decay)."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup: int


def fit(
    model: torch.nn.Module,
    schedule: Schedule,
    num_images: int,
    rng: np.random.Generator,
    step_loss: Callable[[np.ndarray], torch.Tensor],
    name: str,
    log_period: int,
    after_step: Optional[Callable[[int], None]] = None,
) -> float:
    """The pre-training loop: ``schedule.steps`` AdamW steps on ``step_loss(indices)`` for batches of image indices
    drawn from ``num_images`` without replacement (reshuffled when a pass ends); ``after_step(steps_done)`` runs
    after every update. Logs the loss every ``log_period`` steps; returns the mean loss of the last ``log_period``
    steps."""
    start = time.perf_counter()
    optimizer = torch.optim.AdamW(model.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, schedule.steps, schedule.warmup)
    )
    model.train()
    order, losses = rng.permutation(num_images), []
    for step in range(schedule.steps):
        first = (step * schedule.batch_size) % num_images
        if first + schedule.batch_size > num_images:
            order, first = rng.permutation(num_images), 0
        loss = step_loss(order[first : first + schedule.batch_size])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step(step + 1)
        losses.append(loss.item())
        if (step + 1) % log_period == 0 or step + 1 == schedule.steps:
            logger.info(
                "%s step %d/%d  loss %.3f  lr %.2e  %.1f s", name, step + 1, schedule.steps,
                np.mean(losses[-log_period:]), scheduler.get_last_lr()[0], time.perf_counter() - start,
            )  # fmt: skip
    return float(np.mean(losses[-log_period:]))


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
