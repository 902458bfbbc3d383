"""What the pre-training stages share: image batches, the schedule and its checks, saving with provenance."""

import hashlib
import json
import logging
import math
import os
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

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


class RenderedPool:
    """``count`` training examples drawn on first use: ``render(i)`` gives example i (a tuple of arrays, a pure
    function of i), ``take(indices)`` stacks the examples asked for, drawing those not drawn yet once. A run draws
    only what its batches reach: a short run draws a few batches, a long one every example once."""

    def __init__(self, render: Callable[[int], Tuple[np.ndarray, ...]], count: int):
        self.render, self.count = render, count
        self._drawn: Dict[int, Tuple[np.ndarray, ...]] = {}

    def take(self, indices: Sequence[int]) -> Tuple[np.ndarray, ...]:
        for i in indices:
            if int(i) not in self._drawn:
                self._drawn[int(i)] = self.render(int(i))
        return tuple(np.stack(parts) for parts in zip(*(self._drawn[int(i)] for i in indices)))


class Schedule(NamedTuple):
    """What the pre-training loops share of their settings (AdamW with a linear warm-up and a cosine decay)."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup: int

    def check(self, num_images: int, eval_period: int = 0, eval_images: int = 1) -> None:
        """Refuses, before any work, numbers that could only give weights that look trained but are not (no step),
        a traceback (no image, an empty batch) or a run that records settings it did not use (a batch larger than
        the images it is drawn from)."""
        counts = (("steps", self.steps), ("batch size", self.batch_size), ("number of images", num_images))
        for name, value in counts + (("number of held-out images", eval_images),):
            if value < 1:
                raise ValueError(f"the {name} must be at least 1, got {value}")
        if self.batch_size > num_images:
            raise ValueError(
                f"the batch size ({self.batch_size}) is larger than the number of images it is drawn from "
                f"({num_images}): lower the batch size or raise the number of images"
            )
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"the learning rate must be a positive number, got {self.lr}")
        if self.warmup < 0 or self.weight_decay < 0 or eval_period < 0:
            raise ValueError(
                f"warm-up ({self.warmup}), weight decay ({self.weight_decay}) and evaluation period ({eval_period}) "
                "cannot be negative"
            )


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
    after every update. Logs the loss every ``log_period`` steps; returns the loss of every step.

    Raises:
        FloatingPointError: the loss is not finite (the run diverged); nothing is saved.
    """
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
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{name} pre-training diverged: the loss is {loss.item()} at step {step + 1}; nothing was saved "
                "(a lower learning rate may help)"
            )
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
    return losses


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


MANIFEST = "manifest.json"


def save_report(report: Dict, path: str) -> None:
    """Writes a stage's ``report`` as JSON (strict: a NaN or infinity is an error, not invalid JSON), atomically, and
    records it in the manifest of its folder (``manifest.json``: weights file name -> its report), the one file that
    says how every weights file of a folder was made."""
    text = json.dumps(report, indent=2, allow_nan=False)
    with atomic_write(path, "w") as f:
        f.write(text)
    manifest_path = os.path.join(os.path.dirname(os.path.abspath(path)), MANIFEST)
    manifest = read_manifest(manifest_path)
    manifest[os.path.basename(report["weights"])] = report
    with atomic_write(manifest_path, "w") as f:
        f.write(json.dumps(dict(sorted(manifest.items())), indent=2, allow_nan=False))
    logger.info("wrote %s (and its entry in %s)", path, manifest_path)


def read_manifest(path: str) -> Dict[str, Dict]:
    """The manifest at ``path`` ({} when there is none yet).

    Raises:
        ValueError: naming the file when it is not a JSON object.
    """
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        try:
            manifest = json.load(f)
        except ValueError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); remove it to start a new manifest") from error
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} holds a {type(manifest).__name__}, not a manifest (weights file -> report)")
    return manifest


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def finish_stage(
    state: Dict[str, torch.Tensor],
    output: str,
    report: Dict,
    losses: List[float],
    log_period: int,
    started: Tuple[float, Dict[str, Any]],
) -> Dict:
    """Saves a trained stage's weights and completes its report: the loss (the mean of the last ``log_period``
    steps, the first steps' losses, the logged means), the weights' size and sha256, and ``started``'s
    (``time.perf_counter()``, :func:`provenance`) taken when the stage began, with the time it took. Returns the
    report."""
    start, origin = started
    save_state_dict(state, output)
    means = [float(np.mean(losses[i : i + log_period])) for i in range(0, len(losses), log_period)]
    return {
        "weights": output,
        "sha256": sha256(output),
        "bytes": os.path.getsize(output),
        **report,
        "steps_done": len(losses),
        "final_loss": float(np.mean(losses[-log_period:])),
        "first_losses": losses[:FIRST_LOSSES],
        "loss_per_period": means,
        "provenance": origin,
        "seconds": time.perf_counter() - start,
    }


# how many of the first steps' losses a report keeps (a rerun of those steps must reproduce them)
FIRST_LOSSES = 20
