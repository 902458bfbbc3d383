"""Vision-Language Fusion (VLF) block: image guidance over space, then text guidance across classes.

Notation: B images, N classes, h x w the CLIP grid (P = h * w positions), C the correlation-embedding width
(``hidden_dim``), G the width of the class-specific image guidance, T the CLIP text-embedding width, H heads.

Both stages keep the correlation embedding channels-last, as [B, N, P, C] (a view of [B * N, h, w, C] for the
spatial stage), so that every linear layer acts on the last dimension and the class axis is never moved. The
block returns it in that storage too (a [B, N, C, h, w] view), so that the next block reads its chunks and the
1x1 map head convolves them without a copy.

On the CPU, classes are processed in chunks of ``class_chunk`` (all at once for 0, and on GPUs; see
:func:`class_chunks`): everything but the class attention's sums is per class, so a chunk's temporaries (attention
matrices, MLP activations) stay small and their memory is reused from chunk to chunk instead of being mapped
afresh for all N classes at once. The result does not depend
on the chunk size beyond float rounding.
"""

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import Mlp
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn
from torch.nn import functional as F

from esc_net.modeling.class_chunks import class_chunks


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
    windows, ``window_size // 2`` for shifted ones.

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
        shifts: Sequence[int] = (0, None),
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
    """A pre-norm transformer layer across classes: text-guided linear attention, then an MLP, each residual. Its
    :meth:`forward` is the plain form; :meth:`VisionLanguageFusion.forward_fast` runs the same weights over chunks
    of classes in two passes (the attention's class sums first, then every class's output).

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
        mlp_ratio: float = 4.0,
        pad_to: int = 0,
    ):
        super().__init__()
        # The LayerNorm puts the projected text tokens on the same scale as the normalised correlation features
        # they are concatenated with (CLIP text embeddings are unit vectors, i.e. tiny per entry).
        self.text_proj = nn.Sequential(nn.Linear(text_dim, text_guidance_dim), nn.LayerNorm(text_guidance_dim))
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.attn = ClassLinearAttention(hidden_dim, text_guidance_dim, num_heads)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.mlp = Mlp(hidden_dim, int(hidden_dim * mlp_ratio))
        self.pad_to = pad_to
        if pad_to > 0:
            self.pad_token = nn.Parameter(torch.zeros(hidden_dim))
            self.pad_text = nn.Parameter(torch.zeros(text_guidance_dim))

    def forward(self, x: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """The layer as its plain composition: every class token attends to every class token (and to the padding
        tokens) through an explicit N x N matrix of linear-attention scores, then the MLP; both residual.
        :meth:`VisionLanguageFusion.forward_fast` computes the same in chunks of classes, through the attention's
        class sums.

        Args:
            x: [B, N, P, C] correlation embedding after the image guidance; text_embeds: [B, N, T] class embeddings.
        Returns:
            [B, N, P, C].
        """
        B, N, P, C = x.shape
        tokens, guides = x, self.text_proj(text_embeds).unsqueeze(2)  # [B, N, 1, T']
        if self.pad_to > N:
            pads = self.pad_to - N
            tokens = torch.cat([x, self.pad_token.expand(B, pads, P, C)], dim=1)
            guides = torch.cat([guides, self.pad_text.expand(B, pads, 1, -1)], dim=1)
        q, k, v = self.attn.features(self.norm1(tokens), guides)  # [B, N', P, H, d] each
        scores = torch.einsum("bnphd,bmphd->bphnm", q, k)  # non-negative (elu + 1 feature maps)
        attended = torch.einsum("bphnm,bmphd->bnphd", scores / scores.sum(dim=-1, keepdim=True), v)
        x = x + self.attn.proj(attended.flatten(-2))[:, :N]
        return x + self.mlp(self.norm2(x))

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


# The class-specific image guidance of a slice of classes, [B, n, G, h, w]: a tensor for all classes, or a function
# that computes it for the classes of a slice (so that it, too, is computed one chunk at a time).
GuidanceSource = Union[torch.Tensor, Callable[[slice], torch.Tensor]]


class VisionLanguageFusion(nn.Module):
    """Refines the correlation embedding of every class with image guidance (space) and text guidance (classes).

    1. Image guidance (:class:`ImageGuidance`): fuse the correlation embedding with the class-specific image
       features F_v'^n, then window attention (Swin) over the h x w grid, residual.
    2. Text guidance (:class:`TextGuidance`): at every (image, position), the N class tokens attend to each other
       with linear attention whose queries and keys are guided by the class text embeddings; then an MLP.

    There is no positional embedding over classes: the output is permuted exactly as the classes are, and any
    number of classes (including one) works. Images never interact. Classes are processed ``class_chunk`` at a
    time (see the module docstring); memory beyond the inputs and outputs is O(B * class_chunk * h * w * C).

    Args:
        swin_shifts: the shift of each Swin block of the image guidance (0: regular windows, None: half a window).
        class_pad: pad vocabularies smaller than this to this many tokens in the class attention (0: never; see
            :class:`TextGuidance`).
        reference: run :meth:`forward_reference` instead of :meth:`forward_fast` (``IMPLEMENTATION``).
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
        swin_shifts: Sequence[Optional[int]] = (0,),
        class_chunk: int = 16,
        class_pad: int = 0,
        reference: bool = False,
    ):
        super().__init__()
        self.reference = reference
        if hidden_dim % num_heads != 0:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")
        self.hidden_dim = hidden_dim
        self.guidance_dim = guidance_dim
        self.text_dim = text_dim
        self.grid_size = tuple(grid_size)
        self.class_chunk = class_chunk
        self.image_guidance = ImageGuidance(
            hidden_dim, guidance_dim, self.grid_size, num_heads, window_size, swin_shifts
        )
        self.text_guidance = TextGuidance(hidden_dim, text_dim, text_guidance_dim, num_heads, pad_to=class_pad)

    def _check_inputs(self, corr_embed: torch.Tensor, text_embeds: torch.Tensor):
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

    def _guidance(self, source: GuidanceSource, classes: slice, shape: Tuple[int, ...]) -> torch.Tensor:
        guidance = source(classes) if callable(source) else source[:, classes]
        if tuple(guidance.shape) != shape:
            raise ValueError(
                f"VisionLanguageFusion: image_guidance must have shape {shape} for classes {classes.start}:"
                f"{classes.stop} (guidance_dim={self.guidance_dim}), got {tuple(guidance.shape)}"
            )
        return guidance

    def forward(
        self, corr_embed: torch.Tensor, image_guidance: GuidanceSource, text_embeds: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            corr_embed: [B, N, C, h, w] correlation embedding of every class.
            image_guidance: SAM-refined, class-specific image features F_v'^n: [B, N, G, h, w], or a function
                that returns them for a slice of classes.
            text_embeds: [B, N, T] class text embeddings.

        Returns:
            [B, N, C, h, w] refined correlation embedding (the fast path's: a view of channels-last storage
            [B, N, h, w, C]).
        """
        self._check_inputs(corr_embed, text_embeds)
        if self.reference:
            return self.forward_reference(corr_embed, image_guidance, text_embeds)
        return self.forward_fast(corr_embed, image_guidance, text_embeds)

    def forward_reference(self, corr_embed, image_guidance: GuidanceSource, text_embeds) -> torch.Tensor:
        """The VLF block as the plain composition of its two stages on all classes at once: the image guidance
        (:class:`ImageGuidance`, timm's Swin blocks), then the text guidance (:meth:`TextGuidance.forward`, an
        explicit class attention). Arguments and result as :meth:`forward`."""
        B, N, C, h, w = corr_embed.shape
        guidance = self._guidance(image_guidance, slice(0, N), (B, N, self.guidance_dim, h, w))
        x = self.image_guidance(
            corr_embed.permute(0, 1, 3, 4, 2).flatten(0, 1), guidance.permute(0, 1, 3, 4, 2).flatten(0, 1)
        )
        x = self.text_guidance(x.reshape(B, N, h * w, C), text_embeds)
        return x.reshape(B, N, h, w, C).permute(0, 1, 4, 2, 3)

    def forward_fast(self, corr_embed, image_guidance: GuidanceSource, text_embeds) -> torch.Tensor:
        """The fast variant of :meth:`forward_reference`, the same function
        (tests/test_vlf_block.py::test_fast_path_equals_the_reference): classes in chunks of ``class_chunk`` (only
        the class attention's sums cross chunks: pass 1 forms them, pass 2 lets every class attend to them), which
        keeps the temporaries small; the correlation embedding kept channels-last. Arguments and result as
        :meth:`forward`."""
        B, N, C, h, w = corr_embed.shape
        chunks = class_chunks(N, self.class_chunk, corr_embed.device)
        tg = self.text_guidance
        text = tg.text_proj(text_embeds).unsqueeze(2)  # [B, N, 1, T']

        # Pass 1: image guidance of every chunk, and the class attention's sums over all classes.
        spatial: List[Tuple[torch.Tensor, torch.Tensor]] = []
        count = tg.token_count(N)
        kv, k_sum = tg.padding_sums(N) if count > N else (0, 0)
        for classes in chunks:
            n = classes.stop - classes.start
            guidance = self._guidance(image_guidance, classes, (B, n, self.guidance_dim, h, w))
            corr = corr_embed[:, classes].permute(0, 1, 3, 4, 2).flatten(0, 1)  # [B*n, h, w, C], a view if stored so
            x = self.image_guidance(corr, guidance.permute(0, 1, 3, 4, 2).flatten(0, 1)).reshape(B, n, h * w, C)
            q, k, v = tg.attn.features(tg.norm1(x), text[:, classes])
            chunk_kv, chunk_k_sum = tg.attn.class_sums(k, v, count)
            kv, k_sum = kv + chunk_kv, k_sum + chunk_k_sum
            spatial.append((x, q))

        # Pass 2: every class attends to the sums, then the MLP.
        out = []
        for x, q in spatial:
            x = x + tg.attn.attend(q, kv, k_sum)
            x = x + tg.mlp(tg.norm2(x))
            out.append(x.unflatten(2, (h, w)))
        return torch.cat(out, dim=1).permute(0, 1, 4, 2, 3)
