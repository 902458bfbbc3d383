"""Attention with separately trainable q, k and v projections, stored in open_clip's packed checkpoint format.

ESC-Net fine-tunes only the query and value projections of CLIP's attention layers. open_clip builds those layers
from ``nn.MultiheadAttention``, which keeps the three input projections in one packed parameter
(``in_proj_weight`` [3C, C], ``in_proj_bias`` [3C]); a single tensor cannot be part trainable and part frozen. The
module here holds q, k and v as separate tensors and packs them back for the forward pass and for the state dict,
so checkpoints keep open_clip's keys and shapes whatever is being trained.
"""

from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SplitQKVAttention", "split_qkv_attention"]

_PROJECTIONS = ("q", "k", "v")
_KINDS = ("weight", "bias")


class SplitQKVAttention(nn.Module):
    """Drop-in replacement of an ``nn.MultiheadAttention`` (C channels, equal q/k/v widths, with biases).

    q and v are always ``nn.Parameter``s. k is a parameter only when ``trainable_k`` is set; otherwise it is a
    buffer, so no optimizer (weight decay included) can ever change it, whatever parameter list it is given.

    State dict: exactly ``nn.MultiheadAttention``'s keys, ``in_proj_weight`` [3C, C] (rows q, k, v),
    ``in_proj_bias`` [3C] and ``out_proj.weight`` / ``out_proj.bias``, whatever ``trainable_k`` is.

    Forward: the arguments and results of ``nn.MultiheadAttention.forward``; the computation is PyTorch's own
    ``F.multi_head_attention_forward`` on the packed projections (one GEMM for self-attention).
    """

    def __init__(self, mha: nn.MultiheadAttention, trainable_k: bool):
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.in_proj_bias is None or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(
                "SplitQKVAttention supports nn.MultiheadAttention with equal q/k/v widths, input biases, no bias_k/"
                f"bias_v and no add_zero_attn (as open_clip builds it); got {mha}"
            )
        self.embed_dim = mha.embed_dim
        self.num_heads = mha.num_heads
        self.dropout = mha.dropout
        self.batch_first = mha.batch_first
        requires_grad = mha.in_proj_weight.requires_grad
        for kind, packed in zip(_KINDS, (mha.in_proj_weight, mha.in_proj_bias)):
            for name, part in zip(_PROJECTIONS, packed.detach().chunk(3)):
                if name == "k" and not trainable_k:
                    self.register_buffer(f"k_{kind}", part.clone())
                else:
                    self.register_parameter(f"{name}_{kind}", nn.Parameter(part.clone(), requires_grad=requires_grad))
        self.out_proj = mha.out_proj

    def qv_parameters(self, kinds: Sequence[str] = _KINDS) -> Iterator[nn.Parameter]:
        """The query and value projection parameters of the given kinds (weights [C, C], biases [C])."""
        for name in ("q", "v"):
            for kind in kinds:
                yield getattr(self, f"{name}_{kind}")

    def packed(self, kind: str) -> Tensor:
        """``in_proj_weight`` [3C, C] (kind "weight") or ``in_proj_bias`` [3C] (kind "bias"), rows q, k, v."""
        return torch.cat([getattr(self, f"{name}_{kind}") for name in _PROJECTIONS])

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """query: [B, L, C] (batch_first) or [L, B, C]; key/value: [B, S, C] or [S, B, C]. Returns (output shaped
        like query, attention weights or None)."""
        batched = query.dim() == 3
        if self.batch_first and batched:
            # F.multi_head_attention_forward is sequence-first. Keep `query is key is value` intact so that it
            # projects self-attention inputs with one packed matrix product.
            if query is key and key is value:
                query = key = value = query.transpose(0, 1)
            elif key is value:
                query, key = query.transpose(0, 1), key.transpose(0, 1)
                value = key
            else:
                query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        output, weights = F.multi_head_attention_forward(
            query,
            key,
            value,
            self.embed_dim,
            self.num_heads,
            self.packed("weight"),
            self.packed("bias"),
            None,
            None,
            False,
            self.dropout,
            self.out_proj.weight,
            self.out_proj.bias,
            training=self.training,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )
        if self.batch_first and batched:
            output = output.transpose(0, 1)
        return output, weights

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # Replaces nn.Module's default (which would write q_weight, k_weight, ...) by the packed open_clip format.
        for kind in _KINDS:
            packed = self.packed(kind)
            destination[f"{prefix}in_proj_{kind}"] = packed if keep_vars else packed.detach()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        for hook in self._load_state_dict_pre_hooks.values():
            hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        assign = local_metadata.get("assign_to_params_buffers", False)
        width = self.embed_dim
        for kind, shape in zip(_KINDS, ((3 * width, width), (3 * width,))):
            key = f"{prefix}in_proj_{kind}"
            if key not in state_dict:
                missing_keys.append(key)
                continue
            packed = state_dict[key]
            if not isinstance(packed, Tensor):
                error_msgs.append(
                    f'While copying the parameter named "{key}", expected torch.Tensor, got {type(packed)}.'
                )
            elif tuple(packed.shape) != shape:
                error_msgs.append(
                    f"size mismatch for {key}: copying a param with shape {tuple(packed.shape)} from checkpoint, "
                    f"the shape in current model is {shape}."
                )
            elif assign:
                for name, part in zip(_PROJECTIONS, packed.detach().chunk(3)):
                    self._assign(f"{name}_{kind}", part)
            else:
                with torch.no_grad():
                    for name, part in zip(_PROJECTIONS, packed.chunk(3)):
                        getattr(self, f"{name}_{kind}").copy_(part)
        if strict:
            own = {f"in_proj_{kind}" for kind in _KINDS}
            for key in state_dict:
                if key.startswith(prefix):
                    head = key[len(prefix) :].split(".", 1)[0]
                    if head not in own and head not in self._modules:
                        unexpected_keys.append(key)

    def _assign(self, attr: str, tensor: Tensor) -> None:
        """``load_state_dict(assign=True)`` for one projection: the module takes ``tensor`` itself (its device and
        dtype, e.g. to materialise a model built on the meta device), as PyTorch does for ordinary parameters. A
        parameter stays a parameter with its ``requires_grad``; a frozen k stays a buffer."""
        current = getattr(self, attr)
        if isinstance(current, nn.Parameter):
            tensor = nn.Parameter(tensor, requires_grad=current.requires_grad)
        setattr(self, attr, tensor)


def split_qkv_attention(model: nn.Module, trainable_k: bool) -> List[SplitQKVAttention]:
    """Replaces, in place, every ``nn.MultiheadAttention`` inside ``model`` by a :class:`SplitQKVAttention` holding
    the same weights. Returns the new modules in ``model.modules()`` order."""
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.MultiheadAttention)
    ]
    replaced = []
    for parent, name, mha in targets:
        split = SplitQKVAttention(mha, trainable_k)
        setattr(parent, name, split)
        replaced.append(split)
    return replaced
