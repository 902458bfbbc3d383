"""Vision-Language Fusion (VLF) block: image guidance over space, then text guidance across classes.

Notation: B images, N classes, h x w the CLIP grid (P = h * w positions), C the correlation-embedding width
(``hidden_dim``), G the width of the class-specific image guidance, T the CLIP text-embedding width, H heads.

Both stages keep the correlation embedding channels-last, as [B, N, P, C] (a view of [B * N, h, w, C] for the
spatial stage), so that every linear layer acts on the last dimension and the class axis is never moved. The
block returns it in that storage too (a [B, N, C, h, w] view), so that the next block reads its chunks and the
1x1 map head convolves them without a copy.

Everything but the class attention's sums is per class, so the ESC-Block's fast path
(:meth:`~esc_net.modeling.esc_block.ESCBlock.forward_fast`) runs the image guidance one chunk of classes at a time and
:class:`TextGuidance` takes those chunks: a chunk's temporaries (attention matrices, MLP activations) stay small and
their memory is reused from chunk to chunk instead of being mapped afresh for all N classes at once. The result does
not depend on the chunk size beyond float rounding.
"""

from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from timm.layers import Mlp
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn
from torch.nn import functional as F

from esc_net.modeling.backbone import BackboneShape
from esc_net.utils.arguments import check_minimum, check_subset

# The parts of the ESC-Blocks that can read the class text embeddings (MODEL.ESC_NET.TEXT_GUIDANCE): the SAM block's
# text token and the VLF block's text guidance.
TEXT_GUIDANCE_PARTS = ("sam", "vlf")


class ConcatLinear(nn.Module):
    """A linear layer over the channel concatenation of several inputs, without building the concatenation.

    ``W [x_1; ...; x_k] + b == W_1 x_1 + ... + W_k x_k + b``, so each input gets its own bias-free linear map and
    the results are summed. The inputs only need to broadcast against each other, which lets one text token per
    class act on every pixel of that class without being copied P times.
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int):
        super().__init__()
        self.projs = nn.ModuleList(nn.Linear(d, out_dim, bias=False) for d in in_dims)
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """
        Args:
            inputs: one tensor per entry of ``in_dims``, [..., in_dims[i]], broadcastable against each other.

        Returns:
            [..., out_dim] (the broadcast shape of the inputs' leading dimensions).
        """
        if len(inputs) != len(self.projs):
            raise ValueError(f"ConcatLinear expects {len(self.projs)} inputs, got {len(inputs)}")
        # The input with the most vectors is projected first, with the bias, and the other (smaller) terms are
        # added to it in place (broadcast): one full-size result, no full-size temporaries.
        pairs = sorted(zip(self.projs, inputs), key=lambda pair: pair[1].numel() // pair[1].shape[-1], reverse=True)
        (proj, x), others = pairs[0], pairs[1:]
        out = F.linear(x, proj.weight, self.bias)
        for proj, x in others:
            out += proj(x)
        return out


class ImageGuidance(nn.Module):
    """Spatial refinement of every class map, guided by that class's image features.

    The correlation embedding and the guidance are fused by a linear layer over their concatenation, then Swin
    blocks (timm) attend over space within windows, one map per (image, class), all maps of a chunk in one batch.
    The result is added to the incoming correlation embedding. ``shifts`` gives each block's shift: 0 for regular
    windows, None for windows shifted by half a window.

    timm shrinks a window larger than the grid to the grid and then drops the shift (a single window already
    covers every position), so on a grid no larger than ``window_size`` every block attends globally. timm
    computes window attention explicitly by default; it is switched to PyTorch's fused attention here (same
    function, no [windows, heads, area, area] matrix kept).
    """

    def __init__(
        self,
        hidden_dim: int,
        guidance_dim: int,
        grid_size: Tuple[int, int],
        num_heads: int,
        window_size: int,
        shifts: Sequence[Optional[int]],
    ):
        super().__init__()
        self.fuse = ConcatLinear((hidden_dim, guidance_dim), hidden_dim)
        self.blocks = nn.Sequential(
            *(
                SwinTransformerBlock(
                    dim=hidden_dim,
                    input_resolution=grid_size,
                    num_heads=num_heads,
                    window_size=window_size,
                    shift_size=window_size // 2 if shift is None else shift,
                )
                for shift in shifts
            )
        )
        for block in self.blocks:
            block.attn.fused_attn = True

    def forward(self, corr: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """
        Args:
            corr: [M, h, w, C] correlation embedding, M = B * N maps.
            guidance: [M, h, w, G] class-specific image features.

        Returns:
            [M, h, w, C] refined correlation embedding.
        """
        return corr + self.blocks(self.fuse(corr, guidance))


class ClassLinearAttention(nn.Module):
    """Multi-head linear attention among the N class tokens at every (image, position).

    Queries and keys come from the correlation embedding and the class's text token (a linear layer over their
    concatenation); values from the correlation embedding alone. With the feature map phi(x) = elu(x) + 1,

        out_n = phi(q_n)^T (sum_m phi(k_m) v_m^T) / (phi(q_n)^T sum_m phi(k_m)),

    so the sums over classes are formed once per position ([H, d, d] per position) and no N x N matrix exists:
    memory and time are linear in N. The sums over classes are symmetric and nothing depends on a class's index,
    so the block is equivariant to the class order and works for any N >= 1.
    """

    def __init__(self, dim: int, text_guidance_dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.eps = eps
        self.qk = ConcatLinear((dim, text_guidance_dim), 2 * dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: [B, N, P, C] correlation embedding (normalised).
            text: [B, N, 1, T'] text guidance token of every class (broadcast over the P positions).

        Returns:
            [B, N, P, C] attention output.
        """
        q, k, v = self.features(x, text)
        return self.attend(q, *self.class_sums(k, v, x.shape[1]))

    def features(self, x: torch.Tensor, text: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Feature-mapped queries and keys and the values of some classes: [B, n, P, H, d] each."""
        heads = (self.num_heads, x.shape[-1] // self.num_heads)
        q, k = (F.elu(t).add_(1) for t in self.qk(x, text).unflatten(-1, (2,) + heads).unbind(-3))
        return q, k, self.v(x).unflatten(-1, heads)

    @staticmethod
    def class_sums(k: torch.Tensor, v: torch.Tensor, num_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """sum_m phi(k_m) v_m^T [B, P, H, d, d] and sum_m phi(k_m) [B, P, H, d] over the classes of ``k`` and ``v``,
        divided by the vocabulary's class count. Sums over chunks of classes add up to those of the vocabulary.

        Averaging instead of summing leaves the attention unchanged (the 1/N cancels) and keeps the sums bounded
        for vocabularies of hundreds of classes under half precision.
        """
        k = k / num_classes
        return torch.einsum("bnphd,bnphe->bphde", k, v), k.sum(dim=1)

    def attend(self, q: torch.Tensor, kv: torch.Tensor, k_sum: torch.Tensor) -> torch.Tensor:
        """The attention output [B, n, P, C] of the classes of ``q`` [B, n, P, H, d], given the class sums."""
        num = torch.einsum("bnphd,bphde->bnphe", q, kv)
        den = torch.einsum("bnphd,bphd->bnph", q, k_sum).unsqueeze(-1)
        return self.proj((num / (den + self.eps)).flatten(-2))


class TextGuidance(nn.Module):
    """A pre-norm transformer layer across classes: text-guided linear attention, then an MLP, each residual.
    :meth:`forward_reference` is the plain form (an explicit N x N attention over all classes); :meth:`forward`
    computes the same over chunks of classes in two passes (the attention's class sums first, then every class's
    output).

    Without ``use_text``, the attention is guided by a learnt token that is the same for every class
    (``shared_guide``) instead of each class's projected text embedding: the classes then attend to each other by
    their correlation embeddings alone.

    With ``pad_to`` > 0, a vocabulary of N < ``pad_to`` classes is padded to ``pad_to`` tokens with a learnt
    padding token (a correlation-embedding token and its text-guidance token, the same at every position), as
    CAT-Seg pads its class attention to 256: every class then attends over the same number of tokens in training
    and at test, whatever the vocabulary's size. The padding tokens only enter the attention's sums and produce
    no output.
    """

    def __init__(
        self,
        hidden_dim: int,
        text_dim: int,
        text_guidance_dim: int,
        num_heads: int,
        *,
        pad_to: int,
        use_text: bool = True,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        if use_text:
            # The LayerNorm puts the projected text tokens on the same scale as the normalised correlation features
            # they are concatenated with (CLIP text embeddings are unit vectors, i.e. tiny per entry).
            self.text_proj = nn.Sequential(nn.Linear(text_dim, text_guidance_dim), nn.LayerNorm(text_guidance_dim))
        else:
            # unit variance per entry: the scale of the LayerNorm'd text tokens it replaces
            self.shared_guide = nn.Parameter(torch.randn(text_guidance_dim))
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.attn = ClassLinearAttention(hidden_dim, text_guidance_dim, num_heads)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.mlp = Mlp(hidden_dim, int(hidden_dim * mlp_ratio))
        self.pad_to = pad_to
        if pad_to > 0:
            self.pad_token = nn.Parameter(torch.zeros(hidden_dim))
            self.pad_text = nn.Parameter(torch.zeros(text_guidance_dim))

    def forward_reference(self, x: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """The layer as its plain composition: every class token attends to every class token (and to the padding
        tokens) through an explicit N x N matrix of linear-attention scores, then the MLP; both residual.
        :meth:`forward` computes the same in chunks of classes, through the attention's class sums.

        Args:
            x: [B, N, P, C] correlation embedding after the image guidance; text_embeds: [B, N, T] class embeddings.
        Returns:
            [B, N, P, C].
        """
        B, N, P, C = x.shape
        tokens, guides = x, self.guides(text_embeds)  # [B, N, 1, T']
        if self.pad_to > N:
            pads = self.pad_to - N
            tokens = torch.cat([x, self.pad_token.expand(B, pads, P, C)], dim=1)
            guides = torch.cat([guides, self.pad_text.expand(B, pads, 1, -1)], dim=1)
        q, k, v = self.attn.features(self.norm1(tokens), guides)  # [B, N', P, H, d] each
        scores = torch.einsum("bnphd,bmphd->bphnm", q, k)  # non-negative (elu + 1 feature maps)
        attended = torch.einsum("bphnm,bmphd->bnphd", scores / scores.sum(dim=-1, keepdim=True), v)
        x = x + self.attn.proj(attended.flatten(-2))[:, :N]
        return x + self.mlp(self.norm2(x))

    def guides(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """The text-guidance token of every class, [B, N, 1, T'] for class embeddings [B, N, T] (broadcast over the
        positions); without ``use_text`` the shared token, the same for every class."""
        if hasattr(self, "text_proj"):
            return self.text_proj(text_embeds).unsqueeze(2)
        return self.shared_guide.expand(*text_embeds.shape[:2], 1, -1)

    def forward(self, chunks: Sequence[torch.Tensor], guides: torch.Tensor) -> List[torch.Tensor]:
        """:meth:`forward_reference` on a vocabulary given in chunks of classes, the same function
        (tests/test_esc_block.py::test_fast_path_equals_the_reference). Only the attention's class sums cross chunks:
        pass 1 forms them over every chunk, pass 2 lets every class attend to them, then the MLP.

        Args:
            chunks: [B, n_i, P, C] correlation embeddings after the image guidance, consecutive chunks of the
                vocabulary's classes, in class order.
            guides: [B, N, 1, T'] :meth:`guides` of the whole vocabulary (N = the sum of the n_i).
        Returns:
            the refined chunks, [B, n_i, P, C] each.
        """
        num_classes = sum(x.shape[1] for x in chunks)
        count = self.token_count(num_classes)
        kv, k_sum = self.padding_sums(num_classes) if count > num_classes else (0, 0)
        queries, start = [], 0
        for x in chunks:
            q, k, v = self.attn.features(self.norm1(x), guides[:, start : start + x.shape[1]])
            chunk_kv, chunk_k_sum = self.attn.class_sums(k, v, count)
            kv, k_sum = kv + chunk_kv, k_sum + chunk_k_sum
            queries.append(q)
            start += x.shape[1]
        refined = []
        for x, q in zip(chunks, queries):
            x = x + self.attn.attend(q, kv, k_sum)
            refined.append(x + self.mlp(self.norm2(x)))
        return refined

    def token_count(self, num_classes: int) -> int:
        """The number of tokens the class attention averages over for a vocabulary of ``num_classes``."""
        return max(num_classes, self.pad_to)

    def padding_sums(self, num_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The padding tokens' share of the class sums of :meth:`ClassLinearAttention.class_sums` for a vocabulary of
        ``num_classes`` < ``pad_to``: ([1, 1, H, d, d], [1, 1, H, d]), broadcast over images and positions."""
        count = self.token_count(num_classes)
        _, k, v = self.attn.features(self.norm1(self.pad_token).view(1, 1, 1, -1), self.pad_text.view(1, 1, 1, -1))
        kv, k_sum = self.attn.class_sums(k, v, count)  # one token: [1, 1, H, d, d], [1, 1, H, d]
        return kv * (count - num_classes), k_sum * (count - num_classes)


class VisionLanguageFusion(nn.Module):
    """Refines the correlation embedding of every class with image guidance (space) and text guidance (classes).

    1. Image guidance (:class:`ImageGuidance`): fuse the correlation embedding with the class-specific image
       features F_v'^n, then window attention (Swin) over the h x w grid, residual.
    2. Text guidance (:class:`TextGuidance`): at every (image, position), the N class tokens attend to each other
       with linear attention whose queries and keys are guided by the class text embeddings; then an MLP.

    There is no positional embedding over classes: the output is permuted exactly as the classes are, and any
    number of classes (including one) works. Images never interact. :meth:`forward` is the plain composition of
    the two stages on all classes at once; the ESC-Block's fast path runs the same two stages over chunks of
    classes (the image guidance per chunk, then :meth:`TextGuidance.forward` on the chunks).

    Args:
        input_shape: the backbone's :class:`BackboneShape`: its embedding width is T, its grid (h, w).
        hidden_dim: C, the correlation embedding's width; guidance_dim: G.
        swin_depth: Swin blocks in the image guidance; block_index: the ESC-Block's place in the stack. Regular and
            shifted windows alternate through the whole stack of blocks (block 0 starts with regular windows).
        class_pad: pad vocabularies smaller than this to this many tokens in the class attention (0: never; see
            :class:`TextGuidance`).
        text_guidance: guide the class attention by each class's text embedding (the paper's reading); False: by a
            learnt token shared by all classes (``MODEL.ESC_NET.TEXT_GUIDANCE`` without "vlf").
        The other arguments are the ``MODEL.ESC_NET`` keys of the same meaning.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: BackboneShape,
        hidden_dim: int,
        guidance_dim: int,
        num_heads: int,
        window_size: int,
        text_guidance_dim: int,
        swin_depth: int,
        block_index: int,
        class_pad: int,
        text_guidance: bool = True,
    ):
        super().__init__()
        if hidden_dim % num_heads != 0:
            raise ValueError(
                f"MODEL.ESC_NET.HIDDEN_DIM ({hidden_dim}) must be divisible by MODEL.ESC_NET.NUM_HEADS ({num_heads})"
            )
        check_minimum("MODEL.ESC_NET.CLASS_ATTENTION_PAD", class_pad, 0)
        self.input_shape = input_shape
        self.hidden_dim = hidden_dim
        self.guidance_dim = guidance_dim
        self.text_dim = text_dim = input_shape.embed_dim
        self.grid_size = tuple(input_shape.grid_size)
        # 0: regular windows; None: shifted by half a window
        shifts = [0 if (block_index * swin_depth + j) % 2 == 0 else None for j in range(swin_depth)]
        self.image_guidance = ImageGuidance(hidden_dim, guidance_dim, self.grid_size, num_heads, window_size, shifts)
        self.text_guidance = TextGuidance(
            hidden_dim, text_dim, text_guidance_dim, num_heads, pad_to=class_pad, use_text=text_guidance
        )

    @classmethod
    def from_config(cls, cfg):
        """The VLF block's own keys; the builder of the ESC-Blocks gives the widths, the grid and the block's place."""
        m = cfg.MODEL.ESC_NET
        return {
            "num_heads": m.NUM_HEADS,
            "window_size": m.WINDOW_SIZE,
            "text_guidance_dim": m.TEXT_GUIDANCE_DIM,
            "swin_depth": m.SWIN_DEPTH,
            "class_pad": m.CLASS_ATTENTION_PAD,
            "text_guidance": "vlf" in check_subset("MODEL.ESC_NET.TEXT_GUIDANCE", m.TEXT_GUIDANCE, TEXT_GUIDANCE_PARTS),
        }

    def check_inputs(self, corr_embed: torch.Tensor, text_embeds: torch.Tensor) -> None:
        """Raises ValueError naming the input whose shape does not fit the block."""
        if corr_embed.dim() != 5:
            raise ValueError(f"corr_embed must be [B, N, C, h, w], got shape {tuple(corr_embed.shape)}")
        B, N, C, h, w = corr_embed.shape
        expected = {"corr_embed": ((B, N, self.hidden_dim) + self.grid_size, corr_embed)}
        expected["text_embeds"] = ((B, N, self.text_dim), text_embeds)
        for name, (shape, t) in expected.items():
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"VisionLanguageFusion: {name} must have shape {shape} "
                    f"(B, N from corr_embed; hidden_dim={self.hidden_dim}, guidance_dim={self.guidance_dim}, "
                    f"text_dim={self.text_dim}, grid_size={self.grid_size}), got {tuple(t.shape)}"
                )

    def forward(
        self, corr_embed: torch.Tensor, image_guidance: torch.Tensor, text_embeds: torch.Tensor
    ) -> torch.Tensor:
        """The VLF block as the plain composition of its two stages on all classes at once: the image guidance
        (:class:`ImageGuidance`, timm's Swin blocks), then the text guidance (:meth:`TextGuidance.forward_reference`,
        an explicit class attention).

        Args:
            corr_embed: [B, N, C, h, w] correlation embedding of every class.
            image_guidance: [B, N, G, h, w] SAM-refined, class-specific image features F_v'^n.
            text_embeds: [B, N, T] class text embeddings.

        Returns:
            [B, N, C, h, w] refined correlation embedding.
        """
        self.check_inputs(corr_embed, text_embeds)
        B, N, C, h, w = corr_embed.shape
        if tuple(image_guidance.shape) != (B, N, self.guidance_dim, h, w):
            raise ValueError(
                f"VisionLanguageFusion: image_guidance must have shape {(B, N, self.guidance_dim, h, w)} "
                f"(guidance_dim={self.guidance_dim}), got {tuple(image_guidance.shape)}"
            )
        x = self.image_guidance(
            corr_embed.permute(0, 1, 3, 4, 2).flatten(0, 1), image_guidance.permute(0, 1, 3, 4, 2).flatten(0, 1)
        )
        x = self.text_guidance.forward_reference(x.reshape(B, N, h * w, C), text_embeds)
        return x.reshape(B, N, h, w, C).permute(0, 1, 4, 2, 3)
