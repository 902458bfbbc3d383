"""The SAM block's fast attention: SAM's two-way layer computed with its cross attentions reassociated.

The same function as segment_anything's ``TwoWayAttentionBlock`` (``SAMBlock.forward_reference`` runs SAM's own
``TwoWayTransformer``; tests/test_sam_block.py::test_fast_path_equals_the_reference checks outputs and gradients),
computed with fewer products: with a handful of prompt tokens against hundreds of image positions, the image side's
projections are moved to the token side (:func:`token_to_image`, :func:`image_to_token`), and what depends only
on the image is formed once per image rather than once per class (:func:`per_class`).

Notation: M = B*N class maps, T tokens, P = h*w image positions, E the SAM width, H heads of d channels.
"""

from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F


def per_class(
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


def attend(attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment_anything's ``Attention`` on already projected q [M, L, d_in], k and v [M, S, d_in], with PyTorch's
    fused scaled-dot-product attention (same softmax(q k^T / sqrt(d_head)) v, without the [M, heads, L, S]
    matrix in memory), then its output projection."""
    out = F.scaled_dot_product_attention(_heads(attention, q), _heads(attention, k), _heads(attention, v))
    return attention.out_proj(out.transpose(1, 2).flatten(2))


def token_to_image(attention, tokens_pe: torch.Tensor, image_pe: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
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


def image_to_token(
    attention, image_q: torch.Tensor, tokens_pe: torch.Tensor, tokens: torch.Tensor, projected: bool
) -> torch.Tensor:
    """segment_anything's ``Attention(image_pe, tokens_pe, tokens)``: the P image positions attend to T tokens.

    Reassociated as in :func:`token_to_image`, on the query side: a head's score (W_q x + b_q) . k is
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


def two_way_layer(layer, queries, query_pe, keys, key_pe, image_projections=None):
    """One of SAM's ``TwoWayAttentionBlock`` s, computed as its forward does, with the cross attentions
    reassociated (:func:`token_to_image`, :func:`image_to_token`).

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
        attended = token_to_image(t2i, queries + query_pe, keys_pe, keys)
        image_q = keys_pe
    else:
        image_k, image_v, image_q = image_projections
        attended = attend(t2i, t2i.q_proj(queries + query_pe), image_k, image_v)
    queries = layer.norm2(queries + attended)
    queries = layer.norm3(queries + layer.mlp(queries))
    attended = image_to_token(i2t, image_q, queries + query_pe, queries, projected=image_projections is not None)
    keys = layer.norm4(keys + attended)
    return queries, keys


def _self_attention(attention, qk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return attend(attention, attention.q_proj(qk), attention.k_proj(qk), attention.v_proj(v))
