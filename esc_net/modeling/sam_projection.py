"""The SAM block's image projection: CLIP's dense features into SAM's image-embedding space, and its alignment.

SAM's pre-trained transformer was trained on the embedding of SAM's own image encoder; ESC-Net gives it projected
CLIP features instead. Three things decide whether those speak SAM's language (docs/laboratory.md, "SAM's
knowledge"):

* the projection's form (``MODEL.ESC_NET.SAM_IMAGE_PROJECTION``): "linear", a 1x1 conv (the paper's reading);
  "mlp", two 1x1 convs with a GELU between them (a per-position non-linear map, hidden width 4E); or "conv", a 3x3
  conv then a 1x1 conv with a GELU between them (the same map reading each position's 3x3 neighbourhood: SAM's
  image encoder attends over the whole image, so its embedding of a position describes the structure around it,
  which CLIP's per-position dense features do not). Every form ends in a LayerNorm2d, as SAM's image encoder does;
* its initial weights (``SAM_PROJECTION_WEIGHTS``): a state dict written by the alignment stage (``esc-net-pretrain
  align``), which fits the projection to SAM's own image embedding of training images, loaded into every SAM block;
* the alignment term of the training loss (``SAM_ALIGN_LOSS_WEIGHT``): the mean squared difference between each
  block's projection of F_v and the aligned projection's (:class:`ProjectionAnchor`), which keeps the projection
  where the alignment put it while ESC-Net trains.
"""

import os
from typing import Dict, Mapping

import torch
from segment_anything.modeling.common import LayerNorm2d
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from esc_net.utils.checkpoint import READ_ERRORS, unreadable_weights_error

PROJECTIONS = ("linear", "mlp", "conv")
# hidden width of the "mlp" and "conv" projections, in multiples of SAM's width E (a transformer MLP's ratio)
MLP_RATIO = 4


def build_image_projection(kind: str, clip_dim: int, embed_dim: int) -> nn.Sequential:
    """The projection ``kind`` (one of :data:`PROJECTIONS`) of [B, clip_dim, h, w] features to [B, embed_dim, h, w].

    The last module is a LayerNorm2d in every form, so that what enters SAM's transformer has the scale of SAM's
    image embedding (unit RMS per position).
    """
    if kind == "linear":
        return nn.Sequential(nn.Conv2d(clip_dim, embed_dim, kernel_size=1), LayerNorm2d(embed_dim))
    if kind in ("mlp", "conv"):
        hidden, size = MLP_RATIO * embed_dim, 1 if kind == "mlp" else 3
        return nn.Sequential(
            nn.Conv2d(clip_dim, hidden, kernel_size=size, padding=size // 2),
            nn.GELU(),
            nn.Conv2d(hidden, embed_dim, kernel_size=1),
            LayerNorm2d(embed_dim),
        )
    raise ValueError(f"MODEL.ESC_NET.SAM_IMAGE_PROJECTION must be one of {list(PROJECTIONS)}, got {kind!r}")


def read_projection_weights(path: str) -> Dict[str, torch.Tensor]:
    """The state dict of an aligned projection (the alignment stage's output).

    Raises:
        FileNotFoundError: naming the file and the command that writes it.
        ValueError: naming the file when it is not a readable state dict of tensors.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.ESC_NET.SAM_PROJECTION_WEIGHTS {path!r} does not exist; `esc-net-pretrain align --config-file "
            "CONFIG` writes it"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except READ_ERRORS as error:
        raise unreadable_weights_error(path, error) from error
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (the alignment stage's output)")
    return dict(state)


def load_projection_weights(projection: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Loads ``state`` into ``projection``; a ValueError lists the missing, unexpected and mismatched keys (an
    aligned projection of another form or size)."""
    expected = projection.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected.keys() & state.keys()
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{source} does not fit the SAM blocks' image projection (MODEL.ESC_NET.SAM_IMAGE_PROJECTION and the "
            f"CLIP and SAM widths must be those it was aligned for): missing keys {missing}, unexpected keys "
            f"{unexpected}, shape mismatches {mismatched}"
        )
    projection.load_state_dict(state)


class ProjectionAnchor(nn.Module):
    """The aligned weights of a projection, kept as non-persistent buffers (they follow the model's device and are
    not part of its checkpoints), and the alignment term that keeps a projection near them."""

    def __init__(self, state: Mapping[str, torch.Tensor]):
        super().__init__()
        self.names = list(state)
        for i, name in enumerate(self.names):
            self.register_buffer(f"anchor{i}", state[name].detach().clone(), persistent=False)

    def loss(self, projection: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """Mean squared difference between ``projection(features)`` and the aligned projection's output for
        ``features`` [B, clip_dim, h, w]. Only the projection gets its gradient: the target and the features are
        constants here (CLIP learns from the segmentation loss alone)."""
        anchored = {name: getattr(self, f"anchor{i}") for i, name in enumerate(self.names)}
        features = features.detach()
        with torch.no_grad():
            target = functional_call(projection, anchored, (features,))
        return F.mse_loss(projection(features), target)
