"""Vision-Language Fusion (VLF) block: image guidance over space, then text guidance across classes.

Notation: B images, N classes, h x w the CLIP grid (P = h * w positions), C the correlation-embedding width
(``hidden_dim``), G the width of the class-specific image guidance, T the CLIP text-embedding width, H heads.

Both stages keep the correlation embedding channels-last, as [B, N, P, C] (a view of [B * N, h, w, C] for the
spatial stage), so that every linear layer acts on the last dimension and the class axis is never moved.
"""

from typing import Sequence, Tuple

import torch
from timm.layers import Mlp
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn
from torch.nn import functional as F


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
        out = self.bias
        for proj, x in zip(self.projs, inputs):
            out = out + proj(x)
        return out


class ImageGuidance(nn.Module):
    """Spatial refinement of every class map, guided by that class's image features.

    The correlation embedding and the guidance are fused by a linear layer over their concatenation, then a
    regular-window and a shifted-window Swin block (timm) attend over space, one map per (image, class), all
    B * N maps in one batch. The result is added to the incoming correlation embedding.

    timm shrinks a window larger than the grid to the grid and then drops the shift (a single window already
    covers every position), so on a grid no larger than ``window_size`` both blocks attend globally.
    """

    def __init__(
        self, hidden_dim: int, guidance_dim: int, grid_size: Tuple[int, int], num_heads: int, window_size: int
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
                    shift_size=shift,
                )
                for shift in (0, window_size // 2)
            )
        )

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
        B, N, P, C = x.shape
        heads = (self.num_heads, C // self.num_heads)
        q, k = (F.elu(t) + 1 for t in self.qk(x, text).unflatten(-1, (2,) + heads).unbind(-3))  # [B,N,P,H,d]
        v = self.v(x).unflatten(-1, heads)
        # Averaging the keys over classes instead of summing leaves the ratio unchanged (the 1/N cancels) and keeps
        # the class sums bounded for vocabularies of hundreds of classes under half precision.
        k = k / N
        kv = torch.einsum("bnphd,bnphe->bphde", k, v)  # [B, P, H, d, d]
        k_sum = k.sum(dim=1)  # [B, P, H, d]
        num = torch.einsum("bnphd,bphde->bnphe", q, kv)
        den = torch.einsum("bnphd,bphd->bnph", q, k_sum).unsqueeze(-1)
        return self.proj((num / (den + self.eps)).flatten(-2))


class TextGuidance(nn.Module):
    """A pre-norm transformer layer across classes: text-guided linear attention, then an MLP, each residual."""

    def __init__(self, hidden_dim: int, text_dim: int, text_guidance_dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        # The LayerNorm puts the projected text tokens on the same scale as the normalised correlation features
        # they are concatenated with (CLIP text embeddings are unit vectors, i.e. tiny per entry).
        self.text_proj = nn.Sequential(nn.Linear(text_dim, text_guidance_dim), nn.LayerNorm(text_guidance_dim))
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.attn = ClassLinearAttention(hidden_dim, text_guidance_dim, num_heads)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.mlp = Mlp(hidden_dim, int(hidden_dim * mlp_ratio))

    def forward(self, x: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: [B, N, P, C] correlation embedding.
            text_embeds: [B, N, T] class text embeddings.

        Returns:
            [B, N, P, C] refined correlation embedding.
        """
        text = self.text_proj(text_embeds).unsqueeze(2)  # [B, N, 1, T']
        x = x + self.attn(self.norm1(x), text)
        return x + self.mlp(self.norm2(x))


class VisionLanguageFusion(nn.Module):
    """Refines the correlation embedding of every class with image guidance (space) and text guidance (classes).

    1. Image guidance (:class:`ImageGuidance`): fuse the correlation embedding with the class-specific image
       features F_v'^n, then regular- and shifted-window Swin attention over the h x w grid, residual.
    2. Text guidance (:class:`TextGuidance`): at every (image, position), the N class tokens attend to each other
       with linear attention whose queries and keys are guided by the class text embeddings; then an MLP.

    There is no positional embedding over classes: the output is permuted exactly as the classes are, and any
    number of classes (including one) works. Images never interact. Memory is O(B * N * h * w * hidden_dim).
    """

    def __init__(
        self,
        hidden_dim: int = 128,
        guidance_dim: int = 128,
        text_dim: int = 512,
        grid_size: Tuple[int, int] = (24, 24),
        num_heads: int = 4,
        window_size: int = 12,
        text_guidance_dim: int = 128,
    ):
        super().__init__()
        if hidden_dim % num_heads != 0:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")
        self.hidden_dim = hidden_dim
        self.guidance_dim = guidance_dim
        self.text_dim = text_dim
        self.grid_size = tuple(grid_size)
        self.image_guidance = ImageGuidance(hidden_dim, guidance_dim, self.grid_size, num_heads, window_size)
        self.text_guidance = TextGuidance(hidden_dim, text_dim, text_guidance_dim, num_heads)

    def _check_inputs(self, corr_embed: torch.Tensor, image_guidance: torch.Tensor, text_embeds: torch.Tensor):
        if corr_embed.dim() != 5:
            raise ValueError(f"corr_embed must be [B, N, C, h, w], got shape {tuple(corr_embed.shape)}")
        B, N, C, h, w = corr_embed.shape
        expected = {
            "corr_embed": ((B, N, self.hidden_dim) + self.grid_size, corr_embed),
            "image_guidance": ((B, N, self.guidance_dim) + self.grid_size, image_guidance),
            "text_embeds": ((B, N, self.text_dim), text_embeds),
        }
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
        """
        Args:
            corr_embed: [B, N, C, h, w] correlation embedding of every class.
            image_guidance: [B, N, G, h, w] SAM-refined, class-specific image features F_v'^n.
            text_embeds: [B, N, T] class text embeddings.

        Returns:
            [B, N, C, h, w] refined correlation embedding.
        """
        self._check_inputs(corr_embed, image_guidance, text_embeds)
        B, N, C, h, w = corr_embed.shape
        corr = corr_embed.permute(0, 1, 3, 4, 2).flatten(0, 1)  # [B*N, h, w, C]
        guidance = image_guidance.permute(0, 1, 3, 4, 2).flatten(0, 1)  # [B*N, h, w, G]
        x = self.image_guidance(corr, guidance).reshape(B, N, h * w, C)
        x = self.text_guidance(x, text_embeds)
        # Contiguous so that callers can .view() the result (the next block flattens B and N).
        return x.reshape(B, N, h, w, C).permute(0, 1, 4, 2, 3).contiguous()
