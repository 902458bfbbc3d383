"""Strict loading of ESC-Net weights for evaluation and inference."""
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer


class _RecordingCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, remembering which keys did not fit (it only logs them)."""

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_model_weights(model: torch.nn.Module, path: str) -> None:
    """Loads a Detectron2 checkpoint (``model_final.pth``) into ``model`` and insists that it fits.

    Training resumes with Detectron2's lenient ``resume_or_load``; evaluation and the demo use this instead,
    because a checkpoint that misses weights would silently score with random ones.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the checkpoint does not fit; the message lists the missing, unexpected and mis-shaped keys.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model weights not found: {path}")
    checkpointer = _RecordingCheckpointer(model)
    checkpointer.load(path, checkpointables=[])
    incompatible = checkpointer.incompatible
    problems = []
    if incompatible.missing_keys:
        problems.append(f"missing keys: {sorted(incompatible.missing_keys)}")
    if incompatible.unexpected_keys:
        problems.append(f"unexpected keys: {sorted(incompatible.unexpected_keys)}")
    if incompatible.incorrect_shapes:
        shapes = [f"{k} (checkpoint {tuple(a)}, model {tuple(b)})" for k, a, b in incompatible.incorrect_shapes]
        problems.append(f"keys with other shapes: {shapes}")
    if problems:
        raise ValueError(f"the weights in {path} do not fit this model's config; " + "; ".join(problems))
