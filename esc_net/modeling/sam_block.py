"""The SAM block of an ESC-Block.

SAM's own prompt encoder and two-way mask-decoder transformer (segment_anything's ``PromptEncoder`` and
``TwoWayTransformer``) run on CLIP's dense features in place of SAM's image embedding, so SAM's image encoder is
never run. Every class of every image is one element of the transformer's batch (B*N in total, image-major:
element ``b * N + n`` is class n of image b).

Notation: B images, N classes, N_o points per class, h x w the CLIP grid, P = h*w, E the SAM width (``embed_dim``).

Two implementations of the same function: :meth:`SAMBlock.forward_reference` calls segment_anything's
``TwoWayTransformer`` on the plain composition (the place to change the method), and :meth:`SAMBlock.forward_fast`
computes it with the image side formed once per image and the cross attentions reassociated (``sam_attention.py``).
Weights come from an official SAM checkpoint through ``sam_checkpoint.py``; without it a block keeps PyTorch's
random initialisation.
"""

from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from segment_anything.modeling import PromptEncoder, TwoWayTransformer
from torch import nn
from torch.nn import functional as F

from esc_net.modeling import sam_attention as fast
from esc_net.modeling.sam_projection import build_image_projection
from esc_net.modeling.vlf_block import TEXT_GUIDANCE_PARTS
from esc_net.utils.arguments import check_subset

# Pseudo-mask probabilities are clamped to [eps, 1 - eps] before the logit, so that SAM's mask encoder sees
# finite logits in [-9.2, 9.2], the range of confident low-resolution mask logits that SAM feeds back to itself.
MASK_LOGIT_EPS = 1e-4

# Prompt kinds the SAM block can be given (the paper's ablation axis; points + mask is its choice).
PROMPT_TYPES = ("points", "boxes", "mask")


class SAMImageSide(NamedTuple):
    """What SAM's transformer needs of the image side that does not depend on the classes (see
    :meth:`SAMBlock.image_side`): computed once per image and shared by every chunk of classes.

    SAM's image embedding of class n of image b is ``image_b + dense_n``, with ``dense_n`` the mask encoder's last
    1x1 conv of a 16-channel map. The first layer's image-side projections are linear in it, so each is the
    projection of ``image_b`` (here) plus a per-class term through the projection composed with that conv.
    """

    image: torch.Tensor  # [B, P, E] projected CLIP features (plus SAM's "no mask" embedding without a mask prompt)
    key_pe: torch.Tensor  # [1, P, E] SAM's dense positional encoding
    # the first layer's token-to-image key and value and image-to-token query of the image alone, [B, P, d_in] each
    projections: Tuple[torch.Tensor, ...]
    # (weight [out, 16], bias [out]) of the mask encoder's last conv alone, then composed with each projection above;
    # None without a mask prompt
    mask_folds: Optional[Tuple[Tuple[torch.Tensor, torch.Tensor], ...]]


class SAMBlock(nn.Module):
    """Class-specific refinement of CLIP image features with SAM's prompt encoder and two-way transformer.

    Per class, SAM's image embedding is ``image_proj(F_v)`` plus the dense embedding of the class's pseudo mask;
    the prompt tokens are the class's text embedding (projected to E) followed by SAM's sparse tokens (points
    and/or box corners). The transformer's refined image tokens ("keys") are the output. Without ``text_token``,
    a learnt token, the same for every class (``query_token``), takes the text token's place: the class is then
    known to SAM only by its pseudo prompts.

    Both projections end in a LayerNorm, so that what enters SAM's pre-trained transformer has the scale it was
    trained on: SAM's image encoder ends in a LayerNorm2d (unit RMS per position, against 0.71 for its dense
    positional encoding), and its point tokens have an RMS of about 1.2 (a unit-variance learnt embedding plus the
    positional encoding). Without the norms a freshly initialised 1x1 conv of CLIP features has an RMS of about
    0.26 and a projected CLIP text embedding (a unit vector) about 0.04: the pre-trained attention would see
    nearly nothing but positional encodings.

    SAM's point and dense positional encodings are built for the h x w grid: a point (x, y) is a grid cell index
    and is encoded at the centre of that cell, the same place SAM encodes the pixel at the centre of that cell in
    its own 1024 x 1024 input. The pseudo mask is given to SAM's mask encoder at its input size 4h x 4w.

    ``prompt_types`` chooses what SAM is prompted with (any non-empty subset of :data:`PROMPT_TYPES`): the pseudo
    points, the box around the kept region, the pseudo mask. Without a mask SAM's learnt "no mask" embedding is
    the dense prompt, as in SAM itself.

    Parameters that cannot influence the output are frozen (``requires_grad=False``) so that the optimizer skips
    them and DistributedDataParallel never waits for their gradients: the transformer's final token-to-image
    attention and its norm (they only update the tokens, which are discarded), the bias of every token-to-image
    key projection (it adds the same score to every position a token attends to, which the softmax removes), the
    negative-point embedding (pseudo points are positive), the embeddings of the prompt kinds not in
    ``prompt_types``, and, with a mask as the only prompt, the query and key projections of the attentions over
    the single (text) token. They keep the values loaded from SAM.
    """

    @configurable
    def __init__(
        self,
        *,
        clip_dim: int,
        text_dim: int,
        grid_size: Tuple[int, int],
        embed_dim: int,
        depth: int,
        mlp_dim: int,
        num_heads: int,
        prompt_types: Sequence[str],
        image_projection: str,
        text_token: bool = True,
    ):
        """
        Args:
            clip_dim: channels of the CLIP dense features.
            text_dim: width of the class text embeddings.
            grid_size: (h, w) of the CLIP feature grid.
            embed_dim, depth, mlp_dim, num_heads: SAM's mask-decoder transformer sizes (256, 2, 2048, 8 for the
                official checkpoints, which all share the same decoder).
            prompt_types: the prompt kinds to use, a non-empty subset of :data:`PROMPT_TYPES`.
            image_projection: the form of ``image_proj``, one of :data:`~esc_net.modeling.sam_projection.PROJECTIONS`
                (see ``sam_projection.py``).
            text_token: the first token is the class's projected text embedding (the paper's reading); False: a
                learnt token shared by all classes (``MODEL.ESC_NET.TEXT_GUIDANCE`` without "sam").
        """
        super().__init__()
        kinds = tuple(prompt_types)
        if not kinds or any(k not in PROMPT_TYPES for k in kinds) or len(set(kinds)) != len(kinds):
            raise ValueError(
                f"MODEL.ESC_NET.PROMPT_TYPES must be a non-empty list of distinct entries of {list(PROMPT_TYPES)}, "
                f"got {list(kinds)}"
            )
        self.prompt_types = kinds
        self.grid_size = tuple(grid_size)
        self.prompt_encoder = PromptEncoder(
            embed_dim=embed_dim,
            image_embedding_size=self.grid_size,
            input_image_size=self.grid_size,
            mask_in_chans=16,
        )
        self.transformer = TwoWayTransformer(depth=depth, embedding_dim=embed_dim, num_heads=num_heads, mlp_dim=mlp_dim)
        self.image_proj = build_image_projection(image_projection, clip_dim, embed_dim)
        if text_token:
            self.text_proj = nn.Sequential(nn.Linear(text_dim, embed_dim), nn.LayerNorm(embed_dim))
        else:
            # unit variance per entry: the scale of the LayerNorm'd text token it replaces
            self.query_token = nn.Parameter(torch.randn(embed_dim))

        encoder = self.prompt_encoder
        unused = [self.transformer.final_attn_token_to_image, self.transformer.norm_final_attn]
        unused += [layer.cross_attn_token_to_image.k_proj.bias for layer in self.transformer.layers]
        unused.append(encoder.point_embeddings[0])  # negative points
        if "points" not in self.prompt_types:
            unused += [encoder.point_embeddings[1], encoder.not_a_point_embed]
        if "boxes" not in self.prompt_types:
            unused += [encoder.point_embeddings[2], encoder.point_embeddings[3]]
        if "mask" in self.prompt_types:
            unused.append(encoder.no_mask_embed)
        else:
            unused.append(encoder.mask_downscaling)
        if self.prompt_types == ("mask",):
            # The text embedding is then the only token, and attention over a single key is the identity on its
            # value whatever the queries and keys: those projections cannot influence the output.
            for layer in self.transformer.layers:
                unused += [layer.self_attn.q_proj, layer.self_attn.k_proj]
                unused += [layer.cross_attn_image_to_token.q_proj, layer.cross_attn_image_to_token.k_proj]
        for part in unused:
            part.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg):
        """The SAM block's own keys; the builder of the ESC-Blocks gives the sizes of the CLIP features."""
        m = cfg.MODEL.ESC_NET
        return {
            "embed_dim": m.SAM_EMBED_DIM,
            "depth": m.SAM_DEPTH,
            "mlp_dim": m.SAM_MLP_DIM,
            "num_heads": m.SAM_NUM_HEADS,
            "prompt_types": m.PROMPT_TYPES,
            "image_projection": m.SAM_IMAGE_PROJECTION,
            "text_token": "sam" in check_subset("MODEL.ESC_NET.TEXT_GUIDANCE", m.TEXT_GUIDANCE, TEXT_GUIDANCE_PARTS),
        }

    def pretrained_modules(self) -> Tuple[nn.Module, ...]:
        """The parts whose weights come from SAM's checkpoint (they train at ``SOLVER.SAM_MULTIPLIER``)."""
        return self.prompt_encoder, self.transformer

    def image_side(self, image_feats: torch.Tensor) -> SAMImageSide:
        """The class-independent part of the transformer's image side for images ``image_feats`` [B, clip_dim, h, w]
        (a caller that runs the classes in chunks computes it once and passes it to every call)."""
        image = self.image_proj(image_feats).flatten(2).transpose(1, 2)  # [B, P, E]
        if "mask" not in self.prompt_types:  # SAM's learnt "no mask" embedding: the same dense prompt everywhere
            image = image + self.prompt_encoder.no_mask_embed.weight
        key_pe = self.prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2)  # [1, P, E]
        first = self.transformer.layers[0]
        linears = (
            first.cross_attn_token_to_image.k_proj,
            first.cross_attn_token_to_image.v_proj,
            first.cross_attn_image_to_token.q_proj,
        )
        image_pe = image + key_pe
        projections = tuple(linear(x) for linear, x in zip(linears, (image_pe, image, image_pe)))
        mask_folds = None
        if "mask" in self.prompt_types:
            mask_out = self.prompt_encoder.mask_downscaling[-1]
            weight, bias = mask_out.weight.flatten(1), mask_out.bias  # [E, 16], [E]
            # each projection composed with the conv: 16 inputs per class instead of E
            composed = tuple((linear.weight @ weight, torch.mv(linear.weight, bias)) for linear in linears)
            mask_folds = ((weight, bias),) + composed
        return SAMImageSide(image, key_pe, projections, mask_folds)

    def forward(
        self,
        image_feats: torch.Tensor,
        text_embeds: torch.Tensor,
        points: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        masks: Optional[torch.Tensor] = None,
        boxes: Optional[torch.Tensor] = None,
        image_side: Optional[SAMImageSide] = None,
        reference: bool = False,
    ) -> torch.Tensor:
        """
        Args:
            image_feats: [B, clip_dim, h, w] dense CLIP features.
            text_embeds: [B, N, text_dim] class text embeddings.
            points: [B*N, N_o, 2] float (x, y) grid-cell indices of the pseudo points.
            labels: [B*N, N_o] SAM point labels: 1 for a point, -1 for padding.
            masks: [B*N, 1, h, w] pseudo masks, per-pixel probabilities in [0, 1].
            boxes: [B*N, 4] (x0, y0, x1, y1) grid-cell indices of the corners of each class's box.
            Only the prompts named in ``prompt_types`` are read, and those must be given.
            image_side: ``self.image_side(image_feats)`` when the caller has it already (computed here otherwise;
                :meth:`forward_reference` reads none).
            reference: compute :meth:`forward_reference` instead of :meth:`forward_fast` (the same function).

        Returns:
            [B*N, E, h, w] class-specific refined image features.
        """
        self._check_shapes(image_feats, text_embeds, points, labels, masks, boxes)
        prompts = (points, labels, masks, boxes)
        if reference:
            return self.forward_reference(image_feats, text_embeds, *prompts)
        return self.forward_fast(image_feats, text_embeds, *prompts, image_side=image_side)

    def _sparse_tokens(self, text_embeds, points, labels, boxes) -> torch.Tensor:
        """[B*N, 1 + T, E]: the class's text token (or the shared query token), then SAM's sparse prompt tokens.
        With points and no box, SAM pads the points with one "not a point" token; keeping it gives the pre-trained
        transformer the token layout it was trained on: [text; N_o points; padding]."""
        sparse, _ = self.prompt_encoder(
            points=(points, labels) if "points" in self.prompt_types else None,
            boxes=boxes if "boxes" in self.prompt_types else None,
            masks=None,
        )
        M, E = text_embeds.shape[0] * text_embeds.shape[1], self.transformer.embedding_dim
        if hasattr(self, "text_proj"):
            first = self.text_proj(text_embeds).reshape(M, 1, E)
        else:
            first = self.query_token.expand(M, 1, E)
        return torch.cat([first, sparse.expand(M, -1, -1)], dim=1)

    def forward_reference(self, image_feats, text_embeds, points, labels, masks, boxes) -> torch.Tensor:
        """The SAM block as the plain composition of segment_anything's modules: every class's image embedding is
        the projected CLIP features plus the dense embedding of its pseudo mask (SAM's "no mask" embedding without a
        mask prompt), and SAM's own ``TwoWayTransformer`` refines it, prompted by the class's tokens. Arguments and
        result as :meth:`forward`. The method lives here: change it first, then the fast path."""
        B, _, h, w = image_feats.shape
        N = text_embeds.shape[1]
        tokens = self._sparse_tokens(text_embeds, points, labels, boxes)
        M = len(tokens)
        mask_logits = self.mask_logits(masks) if "mask" in self.prompt_types else None
        _, dense = self.prompt_encoder(points=None, boxes=None, masks=mask_logits)  # [M or 1, E, h, w]
        image = self.image_proj(image_feats).repeat_interleave(N, dim=0) + dense
        pe = self.prompt_encoder.get_dense_pe().expand(M, -1, -1, -1)
        _, keys = self.transformer(image, pe, tokens)  # [M, P, E]
        return keys.transpose(1, 2).reshape(M, -1, h, w)

    def forward_fast(self, image_feats, text_embeds, points, labels, masks, boxes, image_side=None) -> torch.Tensor:
        """The fast variant of :meth:`forward_reference`, the same function (outputs and gradients:
        tests/test_sam_block.py::test_fast_path_equals_the_reference): the class-independent image side is formed
        once per image (:meth:`image_side`), and per class only the 16-channel output of the mask encoder's first
        layers; SAM's cross attentions are reassociated (``sam_attention.py``); the transformer's final
        token-to-image attention, which only updates the discarded tokens, is not run."""
        B, _, h, w = image_feats.shape
        N = text_embeds.shape[1]
        side = self.image_side(image_feats) if image_side is None else image_side
        if tuple(side.image.shape[:2]) != (B, h * w):
            raise ValueError(
                f"image_side was computed for {tuple(side.image.shape[:2])} (images, positions), the "
                f"image features have {(B, h * w)}"
            )
        tokens = self._sparse_tokens(text_embeds, points, labels, boxes)
        hidden, folds = None, (None,) * 4
        if "mask" in self.prompt_types:
            encoded = self.prompt_encoder.mask_downscaling[:-1](self.mask_logits(masks))  # [M, 16, h, w]
            hidden, folds = encoded.flatten(2).transpose(1, 2), side.mask_folds  # [M, P, 16]
        keys = fast.per_class(side.image, hidden, folds[0], N)  # [M, P, E]
        projections = tuple(fast.per_class(p, hidden, f, N) for p, f in zip(side.projections, folds[1:]))
        queries = tokens
        for layer in self.transformer.layers:
            queries, keys = fast.two_way_layer(layer, queries, tokens, keys, side.key_pe, projections)
            projections = None
        # a channels-last view, no copy: the 1x1 convs that read it run fastest on that layout on CPUs
        return keys.unflatten(1, (h, w)).permute(0, 3, 1, 2)

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

    def _check_shapes(self, image_feats, text_embeds, points, labels, masks, boxes) -> None:
        if image_feats.dim() != 4 or tuple(image_feats.shape[2:]) != self.grid_size:
            raise ValueError(
                f"SAMBlock was built for [B, C, h, w] image features on a {self.grid_size} grid, got "
                f"{tuple(image_feats.shape)}"
            )
        B, _, h, w = image_feats.shape
        if text_embeds.dim() != 3 or text_embeds.shape[0] != B:
            raise ValueError(f"text_embeds must be [B={B}, N, text_dim], got {tuple(text_embeds.shape)}")
        M = B * text_embeds.shape[1]
        given = {"points": points is not None and labels is not None, "boxes": boxes is not None}
        given["mask"] = masks is not None
        missing = [kind for kind in self.prompt_types if not given[kind]]
        if missing:
            raise ValueError(f"SAMBlock was built for {list(self.prompt_types)} prompts but got no {missing}")
        if "points" in self.prompt_types:
            if points.dim() != 3 or points.shape[0] != M or points.shape[2] != 2:
                raise ValueError(f"points must be [B*N={M}, N_o, 2], got {tuple(points.shape)}")
            if tuple(labels.shape) != tuple(points.shape[:2]):
                raise ValueError(f"labels must be [B*N={M}, N_o={points.shape[1]}], got {tuple(labels.shape)}")
        if "mask" in self.prompt_types and tuple(masks.shape) != (M, 1, h, w):
            raise ValueError(f"masks must be [B*N={M}, 1, {h}, {w}], got {tuple(masks.shape)}")
        if "boxes" in self.prompt_types and tuple(boxes.shape) != (M, 4):
            raise ValueError(f"boxes must be [B*N={M}, 4], got {tuple(boxes.shape)}")
