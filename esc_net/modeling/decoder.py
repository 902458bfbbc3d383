"""U-Net-like upsampling decoder: correlation embedding + CLIP skip features -> one logit map per class."""

from typing import List, Sequence

import torch
from detectron2.config import configurable
from torch import nn
from torch.nn import functional as F

from esc_net.modeling.backbone import BackboneShape
from esc_net.modeling.class_chunks import class_chunks
from esc_net.utils.arguments import check_minimum


def _group_norm(channels: int) -> nn.GroupNorm:
    # Groups of 16 channels where the width allows it; works for the tiny widths of test configs too.
    return nn.GroupNorm(channels // 16 if channels % 16 == 0 else 1, channels)


class SkipProjection(nn.Sequential):
    """Projects CLIP features [B, C_clip, h, w] to [B, G, s*h, s*w] with a transposed conv (stride s)."""

    def __init__(self, clip_width: int, out_dim: int, scale: int):
        super().__init__(nn.ConvTranspose2d(clip_width, out_dim, kernel_size=scale, stride=scale), nn.GELU())


class UpsampleStage(nn.Module):
    """2x bilinear upsampling, fusion with a skip feature shared by all classes, two 3x3 convs.

    The first conv runs over [x ; skip]. It is split into a conv of x (per class) plus a conv of the skip
    (once per image, broadcast over classes), which is the same function as the conv of the concatenation
    without materialising N copies of the skip feature.
    """

    def __init__(self, in_dim: int, skip_dim: int, out_dim: int):
        super().__init__()
        self.conv_x = nn.Conv2d(in_dim, out_dim, 3, padding=1)
        self.conv_skip = nn.Conv2d(skip_dim, out_dim, 3, padding=1, bias=False)
        self.norm1 = _group_norm(out_dim)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, padding=1)
        self.norm2 = _group_norm(out_dim)

    def skip_term(self, skip: torch.Tensor) -> torch.Tensor:
        """The skip feature's share of the first conv, [B, 1, C_out, 2H, 2W] for skip [B, G, 2H, 2W]: once per image
        (the decoder computes it before its chunks of classes), broadcast over the classes."""
        return self.conv_skip(skip).unsqueeze(1)

    def forward(self, x: torch.Tensor, skip_term: torch.Tensor) -> torch.Tensor:
        """x: [B, N, C_in, H, W]; skip_term: ``self.skip_term(skip)``. Returns [B, N, C_out, 2H, 2W]."""
        B, N = x.shape[:2]
        x = F.interpolate(x.flatten(0, 1), scale_factor=2, mode="bilinear", align_corners=False)
        y = self.conv_x(x).unflatten(0, (B, N)) + skip_term
        y = F.gelu(self.norm1(y.flatten(0, 1)))
        y = F.gelu(self.norm2(self.conv2(y)))
        return y.unflatten(0, (B, N))


class CorrelationDecoder(nn.Module):
    """Upsamples the correlation embedding by 2 per stage, one CLIP skip feature per stage, in the order given.

    With skip layers [3, 7] and a 24x24 grid: stage 1 fuses block 3's features at 48x48, stage 2 block 7's at
    96x96 (CAT-Seg's order; [7, 3] gives the reverse); a 3x3 conv then gives the logits [B, N, 96, 96]. Classes
    are independent here: the fast path decodes them ``class_chunk`` at a time on the CPU (see
    :func:`class_chunks`), which keeps the high-resolution temporaries small.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: BackboneShape,
        hidden_dim: int,
        decoder_dims: Sequence[int],
        guidance_dims: Sequence[int],
        class_chunk: int,
    ):
        """
        Args:
            input_shape: the backbone's :class:`BackboneShape`: ``num_skips`` skip features (one per stage),
                ``width`` (C_clip) wide.
            hidden_dim: C, the correlation embedding's width.
            decoder_dims: the channels after each upsampling stage; guidance_dims: the skip features' channels
                there.
            class_chunk: classes per chunk of :meth:`forward_fast` on the CPU (0: all at once).
        """
        super().__init__()
        check_minimum("MODEL.ESC_NET.CLASS_CHUNK", class_chunk, 0)
        self.input_shape = input_shape
        self.class_chunk = class_chunk
        if not len(decoder_dims) == len(guidance_dims) == input_shape.num_skips:
            raise ValueError(
                f"MODEL.ESC_NET.DECODER_DIMS {list(decoder_dims)}, MODEL.ESC_NET.DECODER_GUIDANCE_DIMS "
                f"{list(guidance_dims)} and the backbone's {input_shape.num_skips} skip features "
                "(MODEL.ESC_NET.CLIP_SKIP_LAYERS): the decoder takes one entry of each per upsampling stage"
            )
        self.skip_projections = nn.ModuleList(
            SkipProjection(input_shape.width, g, 2 ** (i + 1)) for i, g in enumerate(guidance_dims)
        )
        in_dims = [hidden_dim, *decoder_dims[:-1]]
        self.stages = nn.ModuleList(UpsampleStage(i, g, o) for i, g, o in zip(in_dims, guidance_dims, decoder_dims))
        self.head = nn.Conv2d(decoder_dims[-1], 1, 3, padding=1)

    @classmethod
    def from_config(cls, cfg):
        """The decoder's own keys; the model gives the backbone's shape."""
        m = cfg.MODEL.ESC_NET
        return {
            "hidden_dim": m.HIDDEN_DIM,
            "decoder_dims": m.DECODER_DIMS,
            "guidance_dims": m.DECODER_GUIDANCE_DIMS,
            "class_chunk": m.CLASS_CHUNK,
        }

    @property
    def upscale(self) -> int:
        """Output resolution / grid resolution."""
        return 2 ** len(self.stages)

    def forward(self, corr_embed: torch.Tensor, skips: List[torch.Tensor], reference: bool = False) -> torch.Tensor:
        """
        Args:
            corr_embed: [B, N, C, h, w].
            skips: CLIP features [B, C_clip, h, w], one per stage, in stage order (the order of
                ``CLIP_SKIP_LAYERS``): ``skips[i]`` joins the i-th upsampling (at 2^(i+1) times the grid).
            reference: decode with :meth:`forward_reference` instead of :meth:`forward_fast`.
        Returns:
            logits: [B, N, upscale*h, upscale*w].
        """
        if len(skips) != len(self.stages):
            raise ValueError(f"the decoder has {len(self.stages)} stages but got {len(skips)} skip features")
        guidance = [project(skip) for project, skip in zip(self.skip_projections, skips)]
        if reference:
            return self.forward_reference(corr_embed, guidance)
        return self.forward_fast(corr_embed, guidance)

    def forward_reference(self, corr_embed: torch.Tensor, guidance: List[torch.Tensor]) -> torch.Tensor:
        """The decoder as its plain composition, all classes at once: each stage upsamples, convolves the
        concatenation [x ; the stage's skip feature copied per class], then its second conv; the head gives the
        logits. ``guidance``: the projected skip features [B, G_i, 2^(i+1) h, 2^(i+1) w]."""
        B, N = corr_embed.shape[:2]
        x = corr_embed.flatten(0, 1)
        for stage, skip in zip(self.stages, guidance):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            weight = torch.cat([stage.conv_x.weight, stage.conv_skip.weight], dim=1)
            y = F.conv2d(torch.cat([x, skip.repeat_interleave(N, dim=0)], dim=1), weight, stage.conv_x.bias, padding=1)
            y = F.gelu(stage.norm1(y))
            x = F.gelu(stage.norm2(stage.conv2(y)))
        return self.head(x).view(B, N, *x.shape[-2:])

    def forward_fast(self, corr_embed: torch.Tensor, guidance: List[torch.Tensor]) -> torch.Tensor:
        """The fast variant of :meth:`forward_reference`, the same function
        (tests/test_decoder.py::test_fast_path_equals_the_reference): each stage's first conv split into a conv of
        x per class plus a conv of the skip once per image (:class:`UpsampleStage`), classes in chunks, and on the
        CPU the channels-last layout."""
        B, N = corr_embed.shape[:2]
        # oneDNN's CPU convolutions run on channels-last data; given NCHW they reorder every input and output
        # (a 3x3 conv of a 16-class chunk at 96x96 took twice as long). Values are the same up to float rounding.
        layout = torch.channels_last if corr_embed.device.type == "cpu" else torch.contiguous_format
        skip_terms = [stage.skip_term(g.contiguous(memory_format=layout)) for stage, g in zip(self.stages, guidance)]
        logits = []
        for classes in class_chunks(N, self.class_chunk, corr_embed.device):
            x = corr_embed[:, classes].flatten(0, 1).contiguous(memory_format=layout).unflatten(0, (B, -1))
            for stage, skip_term in zip(self.stages, skip_terms):
                x = stage(x, skip_term)
            logits.append(self.head(x.flatten(0, 1)).unflatten(0, (B, -1)))
        return torch.cat(logits, dim=1)[:, :, 0]
