"""Chunks of classes for the per-class stages of ESC-Net (prompts, SAM, Swin, decoder)."""

from typing import List

import torch


def class_chunks(num_classes: int, chunk: int, device: torch.device) -> List[slice]:
    """Slices of at most ``chunk`` classes covering ``range(num_classes)``; one slice for ``chunk`` 0 and on GPUs.

    On the CPU, chunks keep each stage's temporaries small enough for the allocator to reuse their memory, where
    temporaries for hundreds of classes are mapped and unmapped afresh on every use (measured: 5.3 M page faults
    and 13.1 s against 0.37 M and 6.5 s for the ESC-Blocks of one 150-class ViT-B view). On a GPU the chunks only
    multiply kernel launches (4.5x slower at 150 classes on an H100); memory there is bounded by
    ``VIEW_CLASSES_PER_PASS`` instead.
    """
    step = chunk if chunk > 0 and device.type == "cpu" else num_classes
    return [slice(start, min(start + step, num_classes)) for start in range(0, num_classes, max(step, 1))]
