"""How much of a pre-trained SAM's skill reaches ESC-Net: SAM's own mask decoder run on ESC-Net's features.

ESC-Net never runs SAM's image encoder: each SAM block projects CLIP's dense features into SAM's embedding space
(``SAMBlock.image_proj``) and feeds SAM's pre-trained transformer with them. If that projection speaks SAM's
language, SAM's *own* mask decoder (with its output heads, which ESC-Net does not use) segments an object from a
single point on it nearly as well as on SAM's own image embedding; if it does not, the pre-trained weights run on
inputs they were never trained for. :func:`transfer_ious` measures that single-point IoU for each candidate image
embedding of the same held-out objects:

* ``sam_encoder``: SAM's own image encoder (the ceiling);
* ``block<i>``: the projection of ESC-Block i of a trained model, applied to that model's CLIP features;
* ``random_projection``: a projection of the same form with a fresh random initialisation (the floor of an
  untrained projection);
* ``least_squares``: a 1x1 linear map fitted by least squares from the CLIP features to SAM's embedding on other
  images (what a linear projection of these features could reach; its R² is reported too);
* any other projections given by name (e.g. the alignment stage's, before ESC-Net's training);
* ``no_image``: an all-zero embedding (SAM's decoder sees only the prompt and its positional encoding).

The objects are the laboratory's (:func:`esc_net.pretrain.sam.render_objects`), the prompt one random point inside
each, and the IoU that of the best of SAM's three masks (the oracle figure, which does not depend on SAM's IoU
head having learnt to rate masks made from foreign embeddings).
"""

import copy
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from segment_anything.modeling import Sam
from torch import nn
from torch.nn import functional as F

from esc_net.pretrain.sam import ObjectPool, single_point_iou

__all__ = ["clip_dense_features", "fit_least_squares", "sam_embedding", "transfer_ious"]

Embedding = Callable[[np.ndarray], torch.Tensor]


@torch.no_grad()
def clip_dense_features(model: nn.Module, images: np.ndarray) -> torch.Tensor:
    """ESC-Net's dense CLIP features F_v [B, D, h, w] of RGB images [B, S, S, 3] uint8 at the model's input size."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(model.device, torch.float32)
    x = (x - model.pixel_mean) / model.pixel_std
    return model.clip.encode_image(x)[0].float()


@torch.no_grad()
def sam_embedding(sam: Sam, images: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """SAM's own image embedding of RGB images [B, 3, H, W] (0-255), averaged onto the CLIP grid ``grid``.

    The images are resized to SAM's input size and normalised with SAM's pixel statistics, so the same call serves
    the official checkpoints (1024 px, 64 x 64 embedding averaged onto 24 x 24 for ViT-B/16 at 384 px) and the
    laboratory's SAM (its own size and grid). Returns [B, E, *grid].
    """
    size = sam.image_encoder.img_size
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
    embedding = sam.image_encoder((x - sam.pixel_mean) / sam.pixel_std)
    if tuple(embedding.shape[-2:]) != tuple(grid):
        embedding = F.adaptive_avg_pool2d(embedding, grid)
    return embedding


def _as_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def fit_least_squares(features: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The 1x1 linear map (with bias) that best maps ``features`` [B, D, h, w] to ``targets`` [B, E, h, w] in the
    least-squares sense: (weight [E, D], bias [E])."""
    x = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).double()
    y = targets.permute(0, 2, 3, 1).reshape(-1, targets.shape[1]).double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    solution = torch.linalg.lstsq(x, y).solution  # [D + 1, E]
    return solution[:-1].T.float().contiguous(), solution[-1].float()


def r_squared(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """1 - residual / total sum of squares over every channel and position of [B, E, h, w] maps."""
    mean = target.mean(dim=(0, 2, 3), keepdim=True)
    return float(1 - ((prediction - target) ** 2).sum() / ((target - mean) ** 2).sum())


@torch.no_grad()
def transfer_ious(
    model: nn.Module,
    sam: Sam,
    held_out: ObjectPool,
    fit_images: np.ndarray,
    seed: int = 0,
    projections: Optional[Dict[str, nn.Module]] = None,
) -> Dict[str, float]:
    """Single-point IoU (percent, best of SAM's three masks) of ``sam``'s mask decoder on ``held_out``'s objects for
    each image embedding of the module docstring, and ``least_squares_r2``, the fitted map's R² on the held-out
    images.

    Args:
        model: a built ESC-Net (its CLIP gives F_v; its ESC-Blocks with a SAM block give the ``block<i>`` rows).
        sam: the pre-trained SAM (:func:`esc_net.pretrain.sam.sam_from_checkpoint`); its mask decoder and prompt
            encoder are used as they are.
        held_out: the objects to prompt, with their images.
        fit_images: other images [n, S, S, 3] uint8 to fit the least-squares map on.
        seed: the points' seed (every row prompts the same points) and the random projection's.
        projections: more rows, name -> a projection of the model's CLIP features into SAM's space.
    """
    model.eval()
    grid = model.clip.output_shape().grid_size
    if tuple(sam.prompt_encoder.image_embedding_size) != grid:
        raise ValueError(
            f"SAM's mask decoder reads a {tuple(sam.prompt_encoder.image_embedding_size)} embedding and the model's "
            f"CLIP grid is {grid}: the transfer is measured where the two grids agree (the laboratory's models)"
        )
    rows: Dict[str, Embedding] = {"sam_encoder": lambda images: sam_embedding(sam, _as_tensor(images), grid)}
    blocks = [block for block in model.blocks if block.use_sam]
    for i, block in enumerate(model.blocks):
        if block.use_sam:
            rows[f"block{i + 1}"] = _projected(model, block.sam.image_proj)
    if blocks:
        torch.manual_seed(seed)
        random_projection = copy.deepcopy(blocks[0].sam.image_proj)
        for module in random_projection.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        rows["random_projection"] = _projected(model, random_projection)
    weight, bias = fit_least_squares(
        clip_dense_features(model, fit_images), sam_embedding(sam, _as_tensor(fit_images), grid)
    )
    rows["least_squares"] = _projected(model, lambda f: torch.einsum("ed,bdhw->behw", weight, f) + bias[:, None, None])
    for name, projection in (projections or {}).items():
        rows[name] = _projected(model, projection.eval())
    rows["no_image"] = lambda images: torch.zeros(len(images), sam.prompt_encoder.embed_dim, *grid)
    results = {name: single_point_iou(sam, held_out, seed, embed=embed, pick="best") for name, embed in rows.items()}
    target = sam_embedding(sam, _as_tensor(held_out.images), grid)
    results["least_squares_r2"] = r_squared(rows["least_squares"](held_out.images), target)
    return results


def _projected(model: nn.Module, projection: Callable[[torch.Tensor], torch.Tensor]) -> Embedding:
    return lambda images: projection(clip_dense_features(model, images)).cpu()
