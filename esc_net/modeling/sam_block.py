"""The SAM block of an ESC-Block, and loading SAM's pre-trained weights into it.

SAM's own prompt encoder and two-way mask-decoder transformer (segment_anything's ``PromptEncoder`` and
``TwoWayTransformer``) run on CLIP's dense features in place of SAM's image embedding, so SAM's image encoder is
never run. Every class of every image is one element of the transformer's batch (B*N in total, image-major:
element ``b * N + n`` is class n of image b).

Notation: B images, N classes, N_o points per class, h x w the CLIP grid, E the SAM width (``embed_dim``).

Without :func:`load_sam_weights` a block keeps PyTorch's random initialisation; the caller decides whether that
deserves a warning.
"""
import logging
import os
from typing import Dict, Mapping, Tuple

import torch
from segment_anything.modeling import PromptEncoder, TwoWayTransformer
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

# Pseudo-mask probabilities are clamped to [eps, 1 - eps] before the logit, so that SAM's mask encoder sees
# finite logits in [-9.2, 9.2], the range of confident low-resolution mask logits that SAM feeds back to itself.
MASK_LOGIT_EPS = 1e-4

# Official SAM state-dict prefix -> attribute of SAMBlock that takes those weights.
SAM_CHECKPOINT_PARTS = {"prompt_encoder.": "prompt_encoder", "mask_decoder.transformer.": "transformer"}

SAM_CHECKPOINT_SOURCE = (
    "the official SAM ViT-B checkpoint is sam_vit_b_01ec64.pth from "
    "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth "
    "(listed at https://github.com/facebookresearch/segment-anything#model-checkpoints)"
)


class SAMBlock(nn.Module):
    """Class-specific refinement of CLIP image features with SAM's prompt encoder and two-way transformer.

    Per class, SAM's image embedding is ``image_proj(F_v)`` plus the dense embedding of the class's pseudo mask;
    the prompt tokens are the class's text embedding (projected to E) followed by SAM's point tokens. The
    transformer's refined image tokens ("keys") are the output.

    SAM's point and dense positional encodings are built for the h x w grid: a point (x, y) is a grid cell index
    and is encoded at the centre of that cell, the same place SAM encodes the pixel at the centre of that cell in
    its own 1024 x 1024 input. The pseudo mask is given to SAM's mask encoder at its input size 4h x 4w.

    Parameters that cannot influence the output are frozen (``requires_grad=False``) so that the optimizer skips
    them and DistributedDataParallel never waits for their gradients: the transformer's final token-to-image
    attention and its norm (they only update the tokens, which are discarded), the negative-point and box-corner
    embeddings (pseudo prompts are positive points only, never boxes) and the "no mask" embedding (a mask is always
    given). They keep the values loaded from SAM.
    """

    def __init__(
        self,
        clip_dim: int,
        text_dim: int,
        grid_size: Tuple[int, int],
        embed_dim: int = 256,
        depth: int = 2,
        mlp_dim: int = 2048,
        num_heads: int = 8,
    ):
        """
        Args:
            clip_dim: channels of the CLIP dense features.
            text_dim: width of the class text embeddings.
            grid_size: (h, w) of the CLIP feature grid.
            embed_dim, depth, mlp_dim, num_heads: SAM's mask-decoder transformer sizes (256, 2, 2048, 8 for the
                official checkpoints, which all share the same decoder).
        """
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.prompt_encoder = PromptEncoder(
            embed_dim=embed_dim,
            image_embedding_size=self.grid_size,
            input_image_size=self.grid_size,
            mask_in_chans=16,
        )
        self.transformer = TwoWayTransformer(
            depth=depth, embedding_dim=embed_dim, num_heads=num_heads, mlp_dim=mlp_dim
        )
        self.image_proj = nn.Conv2d(clip_dim, embed_dim, kernel_size=1)
        self.text_proj = nn.Linear(text_dim, embed_dim)

        for unused in (
            self.transformer.final_attn_token_to_image,
            self.transformer.norm_final_attn,
            self.prompt_encoder.point_embeddings[0],
            self.prompt_encoder.point_embeddings[2],
            self.prompt_encoder.point_embeddings[3],
            self.prompt_encoder.no_mask_embed,
        ):
            unused.requires_grad_(False)

    def forward(
        self,
        image_feats: torch.Tensor,
        text_embeds: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        masks: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            image_feats: [B, clip_dim, h, w] dense CLIP features.
            text_embeds: [B, N, text_dim] class text embeddings.
            points: [B*N, N_o, 2] float (x, y) grid-cell indices of the pseudo points.
            labels: [B*N, N_o] SAM point labels: 1 for a point, -1 for padding.
            masks: [B*N, 1, h, w] pseudo masks, per-pixel probabilities in [0, 1].

        Returns:
            [B*N, E, h, w] class-specific refined image features.
        """
        self._check_shapes(image_feats, text_embeds, points, labels, masks)
        B, _, h, w = image_feats.shape
        N = text_embeds.shape[1]

        # SAM always pads point-only prompts with one "not a point" token; keeping that gives the pre-trained
        # transformer the token layout it was trained on: [text; N_o points; padding].
        sparse, dense = self.prompt_encoder(points=(points, labels), boxes=None, masks=self.mask_logits(masks))
        E = dense.shape[1]
        # The projected CLIP features are broadcast over classes rather than repeated before the addition.
        image = (self.image_proj(image_feats).unsqueeze(1) + dense.view(B, N, E, h, w)).flatten(0, 1)
        tokens = torch.cat([self.text_proj(text_embeds).reshape(B * N, 1, E), sparse], dim=1)
        keys = self._transform_image(image, self.prompt_encoder.get_dense_pe(), tokens)
        return keys.transpose(1, 2).reshape(B * N, E, h, w)

    def _transform_image(self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The image-side output of SAM's TwoWayTransformer: its two-way blocks, as TwoWayTransformer.forward runs
        them, without the final token-to-image attention, which only updates the tokens that ESC-Net discards
        (a fifth of the per-pixel projections saved).

        Args:
            image: [M, E, h, w]; image_pe: [1, E, h, w] (broadcast over M); tokens: [M, T, E].
        Returns:
            [M, h*w, E] the refined image tokens ("keys").
        """
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.transformer.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=key_pe)
        return keys

    def mask_logits(self, masks: torch.Tensor) -> torch.Tensor:
        """Turns pseudo-mask probabilities into the mask logits SAM's mask encoder expects.

        The probabilities are upsampled bilinearly to the encoder's input size (4h x 4w), clamped to
        [MASK_LOGIT_EPS, 1 - MASK_LOGIT_EPS] and mapped through the logit, the inverse of the sigmoid SAM applies
        to its own mask logits: probability 0.5 becomes SAM's decision boundary 0.

        Args:
            masks: [M, 1, h, w] probabilities in [0, 1].

        Returns:
            [M, 1, 4h, 4w] logits.
        """
        masks = F.interpolate(masks, size=self.prompt_encoder.mask_input_size, mode="bilinear", align_corners=False)
        return torch.logit(masks, eps=MASK_LOGIT_EPS)

    def _check_shapes(self, image_feats, text_embeds, points, labels, masks) -> None:
        if image_feats.dim() != 4 or tuple(image_feats.shape[2:]) != self.grid_size:
            raise ValueError(
                f"SAMBlock was built for [B, C, h, w] image features on a {self.grid_size} grid, got "
                f"{tuple(image_feats.shape)}"
            )
        B, _, h, w = image_feats.shape
        if text_embeds.dim() != 3 or text_embeds.shape[0] != B:
            raise ValueError(f"text_embeds must be [B={B}, N, text_dim], got {tuple(text_embeds.shape)}")
        M = B * text_embeds.shape[1]
        if points.dim() != 3 or points.shape[0] != M or points.shape[2] != 2:
            raise ValueError(f"points must be [B*N={M}, N_o, 2], got {tuple(points.shape)}")
        if tuple(labels.shape) != tuple(points.shape[:2]):
            raise ValueError(f"labels must be [B*N={M}, N_o={points.shape[1]}], got {tuple(labels.shape)}")
        if tuple(masks.shape) != (M, 1, h, w):
            raise ValueError(f"masks must be [B*N={M}, 1, {h}, {w}], got {tuple(masks.shape)}")


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
        getattr(block, attr).load_state_dict({k[len(prefix):]: v for k, v in given.items() if k.startswith(prefix)})
    logger.info("Loaded SAM's prompt encoder and two-way transformer (%d tensors) from %s", len(given), source)


def load_sam_weights(block: SAMBlock, checkpoint_path: str) -> None:
    """Loads SAM's pre-trained prompt encoder and decoder transformer from an official checkpoint file.

    See :func:`sam_checkpoint_state` for the file format and :func:`load_sam_state` for the errors.
    """
    load_sam_state(block, sam_checkpoint_state(checkpoint_path), checkpoint_path)
