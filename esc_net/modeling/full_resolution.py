"""Bilinear resampling between the image's size and the model's, in bounded memory.

ESC-Net scores classes on a small square grid (the CLIP input or the sliding-window canvas) and upsamples the
scores to the image's height and width. Upsampling all N classes at once costs N x H x W floats (28.8 GB for 150
classes on an 8000x6000 photo). :func:`upsampled_labels` instead walks the image in bands of rows and the
classes in chunks, keeping a running argmax (and top-k), so its working memory is set by ``budget`` (or one row
of one class for images wider than that), not by the vocabulary; only the label map it returns grows with the
image. :func:`resize_bilinear` shrinks the input
image the same way, reading only the rows and columns that bilinear sampling touches.

Both compute exactly what ``F.interpolate(..., mode="bilinear", align_corners=False)`` computes (up to float
rounding): output pixel ``d`` samples the input at ``(d + 0.5) * in / out - 0.5``, clamped to the edges.
"""

from typing import Dict, Tuple

import torch
from torch.nn import functional as F

from esc_net_runtime.protocol import DEFAULT_BUDGET, MAX_CLASS_CHUNK, OUTPUT_MODES, check_top_k
from esc_net_runtime.protocol import label_dtype as numpy_label_dtype

__all__ = ["OUTPUT_MODES", "full_resolution_output", "label_dtype", "resize_bilinear", "upsampled_labels"]


def label_dtype(num_classes: int) -> torch.dtype:
    """The torch form of :func:`esc_net_runtime.protocol.label_dtype`: uint8 up to 255 classes (255 is an ignore
    value, as :func:`esc_net.utils.label_maps.label_dtype` rules), else int16 or int32."""
    return getattr(torch, numpy_label_dtype(num_classes).name)


def _taps(out_size: int, in_size: int, start: int, stop: int, device) -> Tuple[torch.Tensor, ...]:
    """For outputs ``start..stop-1`` along one axis: the two input indices and the weight of the second.

    :func:`esc_net_runtime.protocol.bilinear_taps` (``fused=False``) computes the same in numpy; here they are tensor
    operations, so that a traced model (fvcore's FLOP count) follows sizes that are traced values.
    """
    # float32 arithmetic, as PyTorch's bilinear kernel uses for float32 tensors
    dst = torch.arange(start, stop, device=device, dtype=torch.float32)
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    src = (scale * (dst + 0.5) - 0.5).clamp(min=0)
    low = src.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    frac = (src - low).clamp(0, 1)
    return low, high, frac


def _resample(values: torch.Tensor, rows: Tuple[torch.Tensor, ...], cols: Tuple[torch.Tensor, ...]) -> torch.Tensor:
    """[C, h, w] -> [C, len(rows), len(cols)] float32, separably: the rows first (touching only two input rows per
    output row), then the columns."""
    low, high, frac = rows
    x = values.index_select(1, low).float().lerp_(values.index_select(1, high).float(), frac[:, None])
    low, high, frac = cols
    return x.index_select(2, low).lerp_(x.index_select(2, high), frac)


def resize_bilinear(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(image[None].float(), size, mode="bilinear", align_corners=False)[0]`` without the float
    copy of the whole image.

    Args:
        image: [C, H, W] of any dtype (e.g. uint8), on any device.
        size: (h, w) of the result.
    Returns:
        [C, h, w] float32 on ``image``'s device. Memory: C x h x W floats besides the result.
    """
    (H, W), (h, w) = image.shape[-2:], size
    return _resample(image, _taps(h, H, 0, h, image.device), _taps(w, W, 0, w, image.device))


def upsampled_labels(
    scores: torch.Tensor, size: Tuple[int, int], top_k: int = 0, budget: int = DEFAULT_BUDGET
) -> Dict[str, torch.Tensor]:
    """The argmax (and top-k) over classes of the bilinear upsampling of ``scores`` to ``size``.

    Args:
        scores: [N, h, w] per-class scores at the model's resolution.
        size: (H, W), the image's size.
        top_k: also return the k best classes per pixel and their scores (0: no).
        budget: floats held by one band of rows of one class chunk (at least one row of one class, W floats);
            the working memory is a few times this.

    Returns:
        ``"sem_seg_labels"``: [H, W] index of the best class (:func:`label_dtype`); with ``top_k``,
        ``"sem_seg_topk_labels"`` [k, H, W] (same dtype) and ``"sem_seg_topk_scores"`` [k, H, W] float16, best
        first. All on ``scores``' device.

    Raises:
        ValueError: the scores hold NaN (a broken model or weights), or top_k is not in [0, N].
    """
    N, h, w = scores.shape
    H, W = size
    if torch.isnan(scores).any():
        raise ValueError(
            f"the model's scores hold NaN ({int(torch.isnan(scores).sum())} of {scores.numel()} values): the "
            "weights or the input are broken; no label can be chosen"
        )
    check_top_k(top_k, N)
    # Bands of full-width rows: the rows are interpolated here (two low-resolution rows per output row), the
    # columns by F.interpolate over the whole width, PyTorch's fast kernel (a band keeps its height, so only the
    # width is resampled). A band of a class chunk holds at most max(budget, W) floats.
    chunk = max(1, min(N, MAX_CLASS_CHUNK, budget // W))
    band_rows = max(1, budget // (chunk * W))
    dtype, device = label_dtype(N), scores.device
    labels = torch.empty(H, W, dtype=dtype, device=device)
    if top_k:
        topk_labels = torch.empty(top_k, H, W, dtype=dtype, device=device)
        topk_scores = torch.empty(top_k, H, W, dtype=torch.float16, device=device)
    for y0 in range(0, H, band_rows):
        low, high, frac = _taps(H, h, y0, min(y0 + band_rows, H), device)
        best = best_index = None
        for c0 in range(0, N, chunk):
            part = scores[c0 : c0 + chunk].float()
            band = part.index_select(1, low).lerp_(part.index_select(1, high), frac[:, None])  # [chunk, rows, w]
            band = F.interpolate(band[None], size=(len(low), W), mode="bilinear", align_corners=False)[0]
            if top_k:
                index = torch.arange(c0, c0 + len(band), device=device)[:, None, None].expand_as(band)
                if best is not None:
                    band, index = torch.cat([best, band]), torch.cat([best_index, index])
                best, position = band.topk(min(top_k, len(band)), dim=0)
                best_index = index.gather(0, position)
            else:
                value, index = band.max(dim=0)
                if best is None:
                    best, best_index = value, index
                else:
                    # strictly greater: a tie keeps the earlier class, as argmax does
                    better = value > best
                    best, best_index = torch.where(better, value, best), torch.where(better, index + c0, best_index)
        rows = slice(y0, y0 + band_rows)
        if top_k:
            topk_labels[:, rows] = best_index.to(dtype)
            topk_scores[:, rows] = best.to(torch.float16)
            labels[rows] = best_index[0].to(dtype)
        else:
            labels[rows] = best_index.to(dtype)
    result = {"sem_seg_labels": labels}
    if top_k:
        result.update(sem_seg_topk_labels=topk_labels, sem_seg_topk_scores=topk_scores)
    return result


def full_resolution_output(scores: torch.Tensor, size: Tuple[int, int], output: str = "scores", top_k: int = 0):
    """The model's output for one image from its [N, h, w] scores, at the image's (H, W) ``size``.

    ``output="scores"``: ``{"sem_seg": [N, H, W] float}`` (N x H x W floats). ``output="labels"``: the bounded
    memory result of :func:`upsampled_labels` (label map, and top-k when ``top_k`` > 0).
    """
    check_top_k(top_k, len(scores))
    if output == "scores":
        return {"sem_seg": F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]}
    if output == "labels":
        return upsampled_labels(scores, size, top_k)
    raise ValueError(f"the inference output must be one of {OUTPUT_MODES}, got {output!r}")
