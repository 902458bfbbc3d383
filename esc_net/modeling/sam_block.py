"""The SAM block of an ESC-Block, and loading SAM's pre-trained weights into it.

SAM's own prompt encoder and two-way mask-decoder transformer (segment_anything's ``PromptEncoder`` and
``TwoWayTransformer``) run on CLIP's dense features in place of SAM's image embedding, so SAM's image encoder is
never run. Every class of every image is one element of the transformer's batch (B*N in total, image-major:
element ``b * N + n`` is class n of image b).

Notation: B images, N classes, N_o points per class, h x w the CLIP grid, E the SAM width (``embed_dim``).

Without :func:`load_sam_state` (on the entries :func:`sam_checkpoint_state` reads from an official checkpoint) a
block keeps PyTorch's random initialisation; the caller decides whether that deserves a warning.
"""
import logging
import os
from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from segment_anything.modeling import PromptEncoder, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

# Pseudo-mask probabilities are clamped to [eps, 1 - eps] before the logit, so that SAM's mask encoder sees
# finite logits in [-9.2, 9.2], the range of confident low-resolution mask logits that SAM feeds back to itself.
MASK_LOGIT_EPS = 1e-4

# Official SAM state-dict prefix -> attribute of SAMBlock that takes those weights.
SAM_CHECKPOINT_PARTS = {"prompt_encoder.": "prompt_encoder", "mask_decoder.transformer.": "transformer"}

# Prompt kinds the SAM block can be given (the paper's ablation axis; points + mask is its choice).
PROMPT_TYPES = ("points", "boxes", "mask")

SAM_CHECKPOINT_SOURCE = (
    "the official SAM ViT-B checkpoint is sam_vit_b_01ec64.pth from "
    "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth "
    "(listed at https://github.com/facebookresearch/segment-anything#model-checkpoints)"
)


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
    and/or box corners). The transformer's refined image tokens ("keys") are the output.

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

    def __init__(
        self,
        clip_dim: int,
        text_dim: int,
        grid_size: Tuple[int, int],
        embed_dim: int = 256,
        depth: int = 2,
        mlp_dim: int = 2048,
        num_heads: int = 8,
        prompt_types: Sequence[str] = ("points", "mask"),
    ):
        """
        Args:
            clip_dim: channels of the CLIP dense features.
            text_dim: width of the class text embeddings.
            grid_size: (h, w) of the CLIP feature grid.
            embed_dim, depth, mlp_dim, num_heads: SAM's mask-decoder transformer sizes (256, 2, 2048, 8 for the
                official checkpoints, which all share the same decoder).
            prompt_types: the prompt kinds to use, a non-empty subset of :data:`PROMPT_TYPES`.
        """
        super().__init__()
        self.prompt_types = check_prompt_types(prompt_types)
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
        self.image_proj = nn.Sequential(nn.Conv2d(clip_dim, embed_dim, kernel_size=1), LayerNorm2d(embed_dim))
        self.text_proj = nn.Sequential(nn.Linear(text_dim, embed_dim), nn.LayerNorm(embed_dim))

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

    def image_side(self, image_feats: torch.Tensor) -> SAMImageSide:
        """The class-independent part of the transformer's image side for images ``image_feats`` [B, clip_dim, h, w]
        (a caller that runs the classes in chunks computes it once and passes it to every call)."""
        image = self.image_proj(image_feats).flatten(2).transpose(1, 2)  # [B, P, E]
        if "mask" not in self.prompt_types:  # SAM's learnt "no mask" embedding: the same dense prompt everywhere
            image = image + self.prompt_encoder.no_mask_embed.weight
        key_pe = self.prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2)  # [1, P, E]
        first = self.transformer.layers[0]
        linears = (first.cross_attn_token_to_image.k_proj, first.cross_attn_token_to_image.v_proj,
                   first.cross_attn_image_to_token.q_proj)
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
            image_side: ``self.image_side(image_feats)`` when the caller has it already (computed here otherwise).

        Returns:
            [B*N, E, h, w] class-specific refined image features.
        """
        self._check_shapes(image_feats, text_embeds, points, labels, masks, boxes)
        B, _, h, w = image_feats.shape
        N = text_embeds.shape[1]
        M, E = B * N, self.transformer.embedding_dim
        side = self.image_side(image_feats) if image_side is None else image_side
        if tuple(side.image.shape[:2]) != (B, h * w):
            raise ValueError(f"image_side was computed for {tuple(side.image.shape[:2])} (images, positions), the "
                             f"image features have {(B, h * w)}")

        # With points and no box, SAM pads the points with one "not a point" token; keeping that gives the
        # pre-trained transformer the token layout it was trained on: [text; N_o points; padding].
        sparse, _ = self.prompt_encoder(
            points=(points, labels) if "points" in self.prompt_types else None,
            boxes=boxes if "boxes" in self.prompt_types else None,
            masks=None,
        )
        tokens = torch.cat([self.text_proj(text_embeds).reshape(M, 1, E), sparse.expand(M, -1, -1)], dim=1)

        # Per class only the 16-channel output of the mask encoder's first layers is formed (see SAMImageSide).
        hidden, folds = None, (None,) * 4
        if "mask" in self.prompt_types:
            encoded = self.prompt_encoder.mask_downscaling[:-1](self.mask_logits(masks))  # [M, 16, h, w]
            hidden, folds = encoded.flatten(2).transpose(1, 2), side.mask_folds  # [M, P, 16]
        keys = _per_class(side.image, hidden, folds[0], N)  # [M, P, E]
        projections = tuple(_per_class(p, hidden, f, N) for p, f in zip(side.projections, folds[1:]))
        # TwoWayTransformer.forward's two-way blocks; its final token-to-image attention only updates the tokens,
        # which ESC-Net discards, so it is not run.
        queries = tokens
        for layer in self.transformer.layers:
            queries, keys = _two_way_layer(layer, queries, tokens, keys, side.key_pe, projections)
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


def _per_class(
    shared: torch.Tensor, hidden: Optional[torch.Tensor], fold: Optional[Tuple[torch.Tensor, torch.Tensor]], N: int
) -> torch.Tensor:
    """``shared_b + fold(hidden_n)`` for every class n of every image b.

    Args:
        shared: [B, P, out] per-image term; hidden: [B*N, P, c] per-class input of the affine map ``fold``
            (weight [out, c], bias [out]), or None when the per-class term is absent; N: classes per image.
    Returns:
        [B*N, P, out].
    """
    B, P = shared.shape[:2]
    if hidden is None:
        return shared.unsqueeze(1).expand(-1, N, -1, -1).reshape(B * N, P, -1)
    per_class = F.linear(hidden, *fold).unflatten(0, (B, N))  # [B, N, P, out]
    return per_class.add_(shared.unsqueeze(1)).flatten(0, 1)


def _heads(attention, x: torch.Tensor) -> torch.Tensor:
    """[M, L, H * d] -> [M, H, L, d] for segment_anything's ``Attention`` of H heads."""
    return x.unflatten(-1, (attention.num_heads, -1)).transpose(1, 2)


def _head_weights(linear: nn.Linear, num_heads: int) -> torch.Tensor:
    """The weight of a projection into H heads of d channels, [H, d, E] (``linear`` maps E -> H * d)."""
    return linear.weight.unflatten(0, (num_heads, -1))


def _attend(attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment_anything's ``Attention`` on already projected q [M, L, d_in], k and v [M, S, d_in], with PyTorch's
    fused scaled-dot-product attention (same softmax(q k^T / sqrt(d_head)) v, without the [M, heads, L, S]
    matrix in memory), then its output projection."""
    out = F.scaled_dot_product_attention(_heads(attention, q), _heads(attention, k), _heads(attention, v))
    return attention.out_proj(out.transpose(1, 2).flatten(2))


def _token_to_image(attention, tokens_pe: torch.Tensor, image_pe: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """segment_anything's ``Attention(tokens_pe, image_pe, image)``: T tokens attend to the P image positions.

    With T << P (a handful of prompt tokens against hundreds of positions) the key and value projections of the
    image side are the dominant cost (2 E d_in per position). They are moved to the token side instead, which is
    the same function reassociated: a head's score q . (W_k x + b_k) is (W_k^T q) . x plus a term that is constant
    over the positions (the softmax drops it), and since the softmax weights sum to one, the values' projection
    applies to the weighted sum of the image tokens, W_v (sum_p a_p x_p) + b_v. Per position this costs
    2 H T E multiply-adds instead of 2 E d_in (for SAM's 8 heads, 7 tokens, E 256 and d_in 128: 0.44x).

    Args:
        tokens_pe: [M, T, E] tokens with their positional part (the queries); image_pe: [M, P, E] image tokens
            with theirs (the keys); image: [M, P, E] image tokens (the values).
    Returns:
        [M, T, E] the attention's output (after ``out_proj``).
    """
    q = _heads(attention, attention.q_proj(tokens_pe))  # [M, H, T, d]
    d = q.shape[-1]
    w_k = _head_weights(attention.k_proj, attention.num_heads)  # [H, d, E]
    folded_q = torch.einsum("mhtd,hde->mhte", q, w_k).flatten(1, 2) * d**-0.5  # [M, H*T, E]
    weights = torch.softmax(torch.bmm(folded_q, image_pe.transpose(1, 2)), dim=-1)  # [M, H*T, P]
    pooled = torch.bmm(weights, image).unflatten(1, q.shape[1:3])  # [M, H, T, E]
    w_v = _head_weights(attention.v_proj, attention.num_heads)
    out = torch.einsum("mhte,hde->mthd", pooled, w_v).flatten(2) + attention.v_proj.bias  # [M, T, H*d]
    return attention.out_proj(out)


def _image_to_token(attention, image_q: torch.Tensor, tokens_pe: torch.Tensor, tokens: torch.Tensor,
                    projected: bool) -> torch.Tensor:
    """segment_anything's ``Attention(image_pe, tokens_pe, tokens)``: the P image positions attend to T tokens.

    Reassociated as in :func:`_token_to_image`, on the query side: a head's score (W_q x + b_q) . k is
    x . (W_q^T k) + b_q . k, and the output projection is applied to each token's value once per class rather than
    to every position's mixture (W_o sum_t a_t v_t = sum_t a_t (W_o v_t)). Per position that costs 2 H T E
    multiply-adds instead of 2 E d_in, or H T (d + E) when the queries are given projected.

    Args:
        image_q: [M, P, E] image tokens with their positional part, or, with ``projected``, their query
            projection [M, P, d_in] (which the caller may have formed more cheaply).
        tokens_pe: [M, T, E] tokens with their positional part (keys); tokens: [M, T, E] (values).
    Returns:
        [M, P, E] the attention's output (after ``out_proj``).
    """
    heads = attention.num_heads
    k = _heads(attention, attention.k_proj(tokens_pe))  # [M, H, T, d]
    T, d = k.shape[2:]
    if projected:
        scores = torch.einsum("mphd,mhtd->mpht", image_q.unflatten(-1, (heads, d)), k) * d**-0.5
    else:
        folded_k = torch.einsum("hde,mhtd->meht", _head_weights(attention.q_proj, heads), k) * d**-0.5
        shift = torch.einsum("hd,mhtd->mht", attention.q_proj.bias.view(heads, d), k) * d**-0.5
        scores = torch.baddbmm(shift.flatten(1).unsqueeze(1), image_q, folded_k.flatten(2)).unflatten(-1, (heads, T))
    weights = torch.softmax(scores, dim=-1).flatten(2)  # [M, P, H*T]
    v = _heads(attention, attention.v_proj(tokens))  # [M, H, T, d]
    w_o = attention.out_proj.weight.unflatten(1, (heads, d))  # [E, H, d]
    projected_v = torch.einsum("mhtd,ehd->mhte", v, w_o).flatten(1, 2)  # [M, H*T, E]
    return torch.baddbmm(attention.out_proj.bias, weights, projected_v)


def _two_way_layer(layer, queries, query_pe, keys, key_pe, image_projections=None):
    """One of SAM's ``TwoWayAttentionBlock`` s, computed as its forward does, with the cross attentions
    reassociated (:func:`_token_to_image`, :func:`_image_to_token`).

    Args:
        layer: the block (its weights are used as they are).
        queries, query_pe: [M, T, E] tokens and their positional part; keys: [M, P, E] image tokens;
            key_pe: [1, P, E].
        image_projections: the image side's (token-to-image key, token-to-image value, image-to-token query)
            projections [M, P, E'] when the caller has them already (they are then used as they are).
    Returns:
        (queries, keys) updated.
    """
    if layer.skip_first_layer_pe:
        queries = _self_attention(layer.self_attn, queries, queries)
    else:
        queries = queries + _self_attention(layer.self_attn, queries + query_pe, queries)
    queries = layer.norm1(queries)

    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    if image_projections is None:
        keys_pe = keys + key_pe
        attended = _token_to_image(t2i, queries + query_pe, keys_pe, keys)
        image_q = keys_pe
    else:
        image_k, image_v, image_q = image_projections
        attended = _attend(t2i, t2i.q_proj(queries + query_pe), image_k, image_v)
    queries = layer.norm2(queries + attended)
    queries = layer.norm3(queries + layer.mlp(queries))
    attended = _image_to_token(i2t, image_q, queries + query_pe, queries, projected=image_projections is not None)
    keys = layer.norm4(keys + attended)
    return queries, keys


def _self_attention(attention, qk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _attend(attention, attention.q_proj(qk), attention.k_proj(qk), attention.v_proj(v))


def check_prompt_types(prompt_types: Sequence[str]) -> Tuple[str, ...]:
    """``prompt_types`` as a tuple, or a ValueError naming the allowed kinds."""
    kinds = tuple(prompt_types)
    if not kinds or any(k not in PROMPT_TYPES for k in kinds) or len(set(kinds)) != len(kinds):
        raise ValueError(
            f"MODEL.ESC_NET.PROMPT_TYPES must be a non-empty list of distinct entries of {list(PROMPT_TYPES)}, "
            f"got {list(kinds)}"
        )
    return kinds


def check_sam_source(cfg) -> None:
    """Refuses to train an ESC-Net whose SAM blocks would start from random weights.

    The SAM weights come from ``MODEL.ESC_NET.SAM_CHECKPOINT`` or, when fine-tuning or resuming, from
    ``MODEL.WEIGHTS``; ``MODEL.ESC_NET.ALLOW_RANDOM_SAM`` opts out (tiny configs, the random-SAM ablation).

    Raises:
        ValueError: naming the key to set and where the official checkpoint comes from.
    """
    m = cfg.MODEL.ESC_NET
    if not m.USE_SAM_BLOCK or m.SAM_CHECKPOINT or cfg.MODEL.WEIGHTS or m.ALLOW_RANDOM_SAM:
        return
    raise ValueError(
        "MODEL.ESC_NET.SAM_CHECKPOINT is empty: training would start the SAM blocks from random weights, which "
        "the paper's ablation shows to be far worse. Pass MODEL.ESC_NET.SAM_CHECKPOINT "
        f"/path/to/sam_vit_b_01ec64.pth ({SAM_CHECKPOINT_SOURCE}), or set MODEL.ESC_NET.ALLOW_RANDOM_SAM True to "
        "train from random SAM weights on purpose."
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
        getattr(block, attr).load_state_dict({k[len(prefix):]: v for k, v in given.items() if k.startswith(prefix)})
    logger.info("Loaded SAM's prompt encoder and two-way transformer (%d tensors) from %s", len(given), source)

