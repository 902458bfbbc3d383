"""Reading SAM's pre-trained weights from an official checkpoint into the SAM blocks of ESC-Net."""

import logging
import os
from typing import Dict, Mapping

import torch

from esc_net.modeling.sam_block import SAMBlock

logger = logging.getLogger(__name__)

# Official SAM state-dict prefix -> attribute of SAMBlock that takes those weights.
SAM_CHECKPOINT_PARTS = {"prompt_encoder.": "prompt_encoder", "mask_decoder.transformer.": "transformer"}

SAM_CHECKPOINT_SOURCE = (
    "the official SAM ViT-B checkpoint is sam_vit_b_01ec64.pth from "
    "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth "
    "(listed at https://github.com/facebookresearch/segment-anything#model-checkpoints)"
)


def sam_checkpoint_state(checkpoint_path: str) -> Dict[str, torch.Tensor]:
    """Reads the tensors a SAMBlock takes from an official SAM checkpoint.

    Args:
        checkpoint_path: a file in the format of ``sam_vit_b_01ec64.pth``: the state dict of a whole
            segment_anything ``Sam`` model saved with ``torch.save``.

    Returns:
        the checkpoint's ``prompt_encoder.*`` and ``mask_decoder.transformer.*`` entries, under their checkpoint
        names. The image encoder and the mask decoder's output heads are left out on purpose: ESC-Net uses CLIP
        features instead of SAM's image embedding and reads the refined image features, not SAM's masks.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file does not hold a state dict with SAM's prompt encoder and decoder transformer.
    """
    if not os.path.isfile(checkpoint_path):
        raise FileNotFoundError(f"SAM checkpoint {checkpoint_path!r} does not exist; {SAM_CHECKPOINT_SOURCE}")
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(
            f"SAM checkpoint {checkpoint_path!r} holds a {type(state).__name__}, expected a plain state dict of "
            f"a whole SAM model (keys image_encoder.*, prompt_encoder.*, mask_decoder.*); {SAM_CHECKPOINT_SOURCE}"
        )
    return _sam_parts(state, checkpoint_path)


def _sam_parts(state: Mapping[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
    """The entries of a SAM state dict under the prefixes in SAM_CHECKPOINT_PARTS; an error if there are none."""
    parts = {k: v for k, v in state.items() if k.startswith(tuple(SAM_CHECKPOINT_PARTS))}
    if not parts:
        raise ValueError(
            f"SAM checkpoint {source!r} holds no prompt_encoder.* or mask_decoder.transformer.* entries (its first "
            f"keys: {', '.join(list(state)[:5]) or 'none'}); expected a plain state dict of a whole SAM model; "
            + SAM_CHECKPOINT_SOURCE
        )
    return parts


def load_sam_state(block: SAMBlock, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Loads the output of :func:`sam_checkpoint_state` (or a whole SAM state dict) into a SAMBlock.

    Reading the file once and calling this for every block avoids reading a large checkpoint once per block.

    Args:
        block: the block whose ``prompt_encoder`` and ``transformer`` are overwritten; its projections are not
            touched.
        state: checkpoint entries named as in the official file (``prompt_encoder.*``,
            ``mask_decoder.transformer.*``); entries under other prefixes are ignored.
        source: where ``state`` comes from, for messages.

    Raises:
        ValueError: listing every missing, unexpected and shape-mismatched key (checkpoint names) when the
            checkpoint does not fit the block's sizes exactly.
    """
    expected = {
        prefix + name: tensor
        for prefix, attr in SAM_CHECKPOINT_PARTS.items()
        for name, tensor in getattr(block, attr).state_dict().items()
    }
    given = _sam_parts(state, source)
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    mismatched = sorted(
        f"{k}: checkpoint {tuple(given[k].shape)}, block {tuple(expected[k].shape)}"
        for k in expected.keys() & given.keys()
        if given[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        problems = [
            f"{title} ({len(keys)}): {', '.join(keys)}"
            for title, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if keys
        ]
        raise ValueError(
            f"SAM checkpoint {source!r} does not fit a SAMBlock with {len(block.transformer.layers)} transformer "
            f"layers of width {block.transformer.embedding_dim} (SAM's decoder: 2 layers of width 256); "
            + "; ".join(problems)
        )
    for prefix, attr in SAM_CHECKPOINT_PARTS.items():
        getattr(block, attr).load_state_dict({k[len(prefix) :]: v for k, v in given.items() if k.startswith(prefix)})
    logger.info("Loaded SAM's prompt encoder and two-way transformer (%d tensors) from %s", len(given), source)
