"""Inference-time knockouts of a trained ESC-Net's SAM blocks: does the model read what its prompts say?

Each knockout changes one thing the trained model's SAM blocks receive, for as long as the context lasts, without
changing a weight; evaluating the benchmarks under each shows what the model has learnt to use:

* ``no_sam_block``: the SAM blocks are skipped; every class is guided by the merged CLIP features alone (the
  ``USE_SAM_BLOCK False`` path, with the trained weights of everything else);
* ``other_class_prompts``: every class gets the pseudo prompts (points and mask) drawn from the map of the next
  class of the vocabulary (a cyclic shift): prompts that exist but name the wrong class;
* ``no_mask_prompt``: every pseudo mask is all zeros (what SAM is told of a class absent everywhere);
* ``no_point_prompts``: every pseudo point is SAM's "not a point" padding.

A model that uses its class-specific prompts loses accuracy under ``other_class_prompts``; one that ignores its
SAM blocks loses nothing under any of them.
"""

import contextlib
from typing import Iterator, List, Tuple

from torch import nn

__all__ = ["KNOCKOUTS", "knockout"]

KNOCKOUTS = ("none", "no_sam_block", "other_class_prompts", "no_mask_prompt", "no_point_prompts")


@contextlib.contextmanager
def knockout(model: nn.Module, kind: str) -> Iterator[None]:
    """Applies the knockout ``kind`` (one of :data:`KNOCKOUTS`; "none" changes nothing) to ``model``'s ESC-Blocks
    until the context exits; the model is then exactly as before."""
    if kind not in KNOCKOUTS:
        raise ValueError(f"unknown knockout {kind!r}; choose one of {list(KNOCKOUTS)}")
    blocks = [block for block in model.blocks if block.use_sam]
    if kind != "none" and not blocks:
        raise ValueError(f"knockout {kind!r} needs SAM blocks, and this model has none (USE_SAM_BLOCK False)")
    changes: List[Tuple[object, str, object]] = []
    for block in blocks:
        if kind == "no_sam_block":
            changes.append((block, "use_sam", False))
        elif kind == "other_class_prompts":
            # one chunk of every class, so that the shift reaches across the whole vocabulary (the same function)
            changes.append((block, "class_chunk", 0))
            changes.append((block.prompt_generator, "forward", _shifted(block.prompt_generator.forward)))
        elif kind != "none":
            changes.append((block.prompt_generator, "forward", _emptied(block.prompt_generator.forward, kind)))
    saved = [(target, name, target.__dict__.get(name, _ABSENT)) for target, name, _ in changes]
    try:
        for target, name, value in changes:
            setattr(target, name, value)
        yield
    finally:
        for target, name, value in reversed(saved):
            if value is _ABSENT:
                delattr(target, name)
            else:
                setattr(target, name, value)


_ABSENT = object()


def _shifted(generate):
    def forward(corr, posterior=None):
        # class n's prompts come from class n + 1's map (and its slice of the posterior)
        return generate(corr.roll(-1, dims=1), None if posterior is None else posterior.roll(-1, dims=1))

    return forward


def _emptied(generate, kind: str):
    def forward(corr, posterior=None):
        prompts = generate(corr, posterior)
        if kind == "no_mask_prompt":
            return prompts._replace(masks=prompts.masks * 0)
        return prompts._replace(labels=prompts.labels.new_full(prompts.labels.shape, -1))

    return forward
