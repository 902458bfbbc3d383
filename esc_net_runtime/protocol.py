"""ESC-Net's inference protocol around its exported image scorer, in numpy: resizing, the sliding-window views and
their merge, passes over views, and the output at the image's full size in bounded memory.

Each function computes what its PyTorch counterpart computes (up to float rounding): :func:`resize_image` and
:func:`resize_maps` as ``F.interpolate(..., mode="bilinear", align_corners=False)`` (and
:func:`esc_net.modeling.full_resolution.resize_bilinear`); :func:`window_views` and :func:`merge_windows` as
:class:`esc_net.modeling.inference.SlidingWindow`; :func:`score_in_passes` as ``InferenceProtocol._score_in_passes``;
:func:`full_resolution_output` as :func:`esc_net.modeling.full_resolution.full_resolution_output`. Bilinear
resampling is separable, two taps per output pixel along each axis: output pixel ``d`` samples the input at
``(d + 0.5) * in / out - 0.5``, clamped to the edges, in float32 arithmetic as PyTorch's kernel uses.
"""

from typing import Callable, Dict, Tuple

import numpy as np

from esc_net_runtime.sliding_window import SlidingWindowLayout

__all__ = [
    "DEFAULT_BUDGET",
    "INFERENCE_MODES",
    "MAX_UINT8_CLASSES",
    "OUTPUT_MODES",
    "bilinear_taps",
    "check_top_k",
    "full_resolution_output",
    "label_dtype",
    "merge_windows",
    "resize_image",
    "resize_maps",
    "score_in_passes",
    "upsampled_labels",
    "window_views",
]

INFERENCE_MODES = ("sliding", "whole")
OUTPUT_MODES = ("scores", "labels")
# Class ids 0..254 in a uint8 label map: 255 is the ignore value (esc_net.utils.label_maps).
MAX_UINT8_CLASSES = int(np.iinfo(np.uint8).max)
# Floats held by one band of rows of one class chunk (16 MB in float32).
DEFAULT_BUDGET = 1 << 22
MAX_CLASS_CHUNK = 64

Taps = Tuple[np.ndarray, np.ndarray, np.ndarray]


def label_dtype(num_classes: int) -> np.dtype:
    """The type of a predicted label map: uint8 up to :data:`MAX_UINT8_CLASSES` classes (255 is an ignore value in
    the project's label maps), else int16 or int32."""
    if num_classes <= MAX_UINT8_CLASSES:
        return np.dtype(np.uint8)
    return np.dtype(np.int16 if num_classes <= 1 << 15 else np.int32)


def check_top_k(top_k: int, num_classes: int) -> None:
    """Raises ValueError unless ``0 <= top_k <= num_classes``."""
    if not 0 <= top_k <= num_classes:
        raise ValueError(f"top_k must be in [0, {num_classes}] (the number of classes), got {top_k}")


def bilinear_taps(out_size: int, in_size: int, start: int, stop: int, fused: bool) -> Taps:
    """For outputs ``start..stop-1`` along one axis: the two input indices (int64) and the weight (float32) of the
    second, in float32 arithmetic as PyTorch computes them for float32 tensors.

    Args:
        fused: compute the source position ``scale * (d + 0.5) - 0.5`` as ``F.interpolate``'s CPU kernel does, in
            one fused multiply-add rounded once (float64 holds the exact product and sum of these float32 values,
            so one rounding follows them too); else in separate float32 operations, as the bounded-memory
            resampling of :mod:`esc_net.modeling.full_resolution` does with tensor operations.
    """
    dst = np.arange(start, stop, dtype=np.float32) + np.float32(0.5)
    scale = np.float32(in_size) / np.float32(out_size)
    if fused:
        src = (np.float64(scale) * dst.astype(np.float64) - 0.5).astype(np.float32)
    else:
        src = scale * dst - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = np.clip(src - low.astype(np.float32), np.float32(0), np.float32(1))
    return low, high, frac


def _lerp(start: np.ndarray, end: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``torch.lerp``'s two-sided formula (exact at both ends), in float32."""
    diff = end - start
    return np.where(weight < 0.5, start + weight * diff, end - diff * (np.float32(1) - weight))


def _resample(values: np.ndarray, rows: Taps, cols: Taps, axis: int) -> np.ndarray:
    """Bilinear resampling of ``values`` along ``axis`` (by ``rows``) then ``axis + 1`` (by ``cols``), as float32;
    only the two input rows of each output row are read (and converted to float)."""
    for taps, along in ((rows, axis), (cols, axis + 1)):
        low, high, frac = taps
        shape = [1] * values.ndim
        shape[along] = -1
        first = np.take(values, low, axis=along).astype(np.float32, copy=False)
        second = np.take(values, high, axis=along).astype(np.float32, copy=False)
        values = _lerp(first, second, frac.reshape(shape))
    return values


def resize_image(image: np.ndarray, size: Tuple[int, int], budget: int = DEFAULT_BUDGET) -> np.ndarray:
    """An [H, W, C] image of any dtype (e.g. uint8 as OpenCV reads it) -> [h, w, C] float32 of ``size`` (h, w).

    The output is made in bands of rows: the working memory is a few times ``budget`` floats (or one output row
    of the input's width), never a float copy of the whole input.
    """
    (H, W, C), (h, w) = image.shape, size
    cols = bilinear_taps(w, W, 0, w, fused=False)
    band = max(1, budget // (W * C))
    result = np.empty((h, w, C), dtype=np.float32)
    for y0 in range(0, h, band):
        rows = bilinear_taps(h, H, y0, min(y0 + band, h), fused=False)
        result[y0 : y0 + band] = _resample(image, rows, cols, axis=0)
    return result


def resize_maps(maps: np.ndarray, size: Tuple[int, int], budget: int = DEFAULT_BUDGET) -> np.ndarray:
    """[C, h, w] -> [C, H, W] float32 of ``size`` (H, W), in chunks of maps: besides the result, the working memory
    is a few times ``budget`` floats (or one map)."""
    (C, h, w), (H, W) = maps.shape, size
    rows, cols = bilinear_taps(H, h, 0, H, fused=True), bilinear_taps(W, w, 0, W, fused=True)
    chunk = max(1, budget // (H * W))
    result = np.empty((C, H, W), dtype=np.float32)
    for c0 in range(0, C, chunk):
        result[c0 : c0 + chunk] = _resample(maps[c0 : c0 + chunk], rows, cols, axis=1)
    return result


def window_views(layout: SlidingWindowLayout, image: np.ndarray) -> np.ndarray:
    """One image [3, size, size] -> its views [num_views, 3, view_size, view_size]: the windows, then the global
    view."""
    w, v = layout.window, layout.view_size
    crops = [image[:, y : y + w, x : x + w] for y, x in layout.offsets]
    if v != w:
        crops = [resize_maps(crop, (v, v)) for crop in crops]
    return np.stack([*crops, resize_maps(image, (v, v))])


def merge_windows(layout: SlidingWindowLayout, scores: np.ndarray) -> np.ndarray:
    """The views' scores [num_views, N, out_window, out_window] -> [N, S, S], S = ``layout.out_side``.

    The windows are averaged where they overlap; that map and the upsampled global view count equally.
    """
    N, side, ow = scores.shape[1], layout.out_side, layout.out_window
    total = np.zeros((N, side, side), dtype=np.float32)
    count = np.zeros((side, side), dtype=np.float32)
    for i, (y, x) in enumerate(layout.out_offsets):
        total[:, y : y + ow, x : x + ow] += scores[i]
        count[y : y + ow, x : x + ow] += 1
    return (total / count + resize_maps(scores[-1], (side, side))) / np.float32(2)


def score_in_passes(
    score_views: Callable[[np.ndarray], np.ndarray],
    views: np.ndarray,
    num_classes: int,
    max_classes_per_view: int,
    view_classes_per_pass: int,
) -> np.ndarray:
    """``score_views`` ([V, 3, S, S] -> [V, N, out, out]) over groups of views: at most
    max(1, ``view_classes_per_pass`` // refined classes) views a pass, where a view refines N classes, or
    ``max_classes_per_view`` if fewer (what a view's memory scales with). ``view_classes_per_pass`` 0: one pass."""
    if not view_classes_per_pass:
        return score_views(views)
    refined_classes = min(num_classes, max_classes_per_view or num_classes)
    per_pass = max(1, view_classes_per_pass // refined_classes)
    return np.concatenate([score_views(views[i : i + per_pass]) for i in range(0, len(views), per_pass)])


def upsampled_labels(
    scores: np.ndarray, size: Tuple[int, int], top_k: int = 0, budget: int = DEFAULT_BUDGET
) -> Dict[str, np.ndarray]:
    """The argmax (and top-k) over classes of the bilinear upsampling of ``scores`` [N, h, w] to ``size`` (H, W),
    in bands of rows and chunks of classes: the working memory is a few times ``budget`` floats (or one row of one
    class for images wider than that), whatever the image's size or the vocabulary's.

    Returns:
        ``"sem_seg_labels"``: [H, W] index of the best class (:func:`label_dtype`; a tie goes to the first class,
        as argmax's); with ``top_k``, ``"sem_seg_topk_labels"`` [k, H, W] (same dtype) and
        ``"sem_seg_topk_scores"`` [k, H, W] float16, best first.

    Raises:
        ValueError: the scores hold NaN (a broken model or weights), or top_k is not in [0, N].
    """
    N, h, w = scores.shape
    H, W = size
    nan = np.isnan(scores)
    if nan.any():
        raise ValueError(
            f"the model's scores hold NaN ({int(nan.sum())} of {scores.size} values): the weights or the input are "
            "broken; no label can be chosen"
        )
    check_top_k(top_k, N)
    chunk = max(1, min(N, MAX_CLASS_CHUNK, budget // W))
    band_rows = max(1, budget // (chunk * W))
    dtype = label_dtype(N)
    # as PyTorch's upsampled_labels: the rows resampled as resize_bilinear does, the columns by F.interpolate
    cols = bilinear_taps(W, w, 0, W, fused=True)
    labels = np.empty((H, W), dtype=dtype)
    if top_k:
        topk_labels = np.empty((top_k, H, W), dtype=dtype)
        topk_scores = np.empty((top_k, H, W), dtype=np.float16)
    for y0 in range(0, H, band_rows):
        rows = bilinear_taps(H, h, y0, min(y0 + band_rows, H), fused=False)
        best = best_index = None
        for c0 in range(0, N, chunk):
            band = _resample(scores[c0 : c0 + chunk], rows, cols, axis=1)  # [chunk, rows, W]
            index = np.arange(c0, c0 + len(band))[:, None, None]
            if top_k:
                index = np.broadcast_to(index, band.shape)
                if best is not None:
                    band, index = np.concatenate([best, band]), np.concatenate([best_index, index])
                best, best_index = _top(band, index, top_k)
            else:
                value, position = band.max(axis=0), band.argmax(axis=0)
                if best is None:
                    best, best_index = value, position
                else:
                    # strictly greater: a tie keeps the earlier class, as argmax does
                    better = value > best
                    best, best_index = np.where(better, value, best), np.where(better, position + c0, best_index)
        rows = slice(y0, y0 + band_rows)
        if top_k:
            topk_labels[:, rows] = best_index
            topk_scores[:, rows] = best
            labels[rows] = best_index[0]
        else:
            labels[rows] = best_index
    result = {"sem_seg_labels": labels}
    if top_k:
        result.update(sem_seg_topk_labels=topk_labels, sem_seg_topk_scores=topk_scores)
    return result


def _top(values: np.ndarray, index: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest of ``values`` [C, ...] along axis 0 and their ``index``, best first; among equal values
    the smaller index first."""
    k = min(k, len(values))
    if k < len(values):
        kept = np.argpartition(-values, k - 1, axis=0)[:k]
        values, index = np.take_along_axis(values, kept, axis=0), np.take_along_axis(index, kept, axis=0)
    order = np.lexsort((index, -values), axis=0)
    return np.take_along_axis(values, order, axis=0), np.take_along_axis(index, order, axis=0)


def full_resolution_output(
    scores: np.ndarray, size: Tuple[int, int], output: str = "scores", top_k: int = 0
) -> Dict[str, np.ndarray]:
    """The model's output for one image from its [N, h, w] scores, at the image's (H, W) ``size``.

    ``output="scores"``: ``{"sem_seg": [N, H, W] float32}`` (N x H x W floats). ``output="labels"``: the bounded
    memory result of :func:`upsampled_labels` (label map, and top-k when ``top_k`` > 0).
    """
    check_top_k(top_k, len(scores))
    if output == "scores":
        return {"sem_seg": resize_maps(scores, size)}
    if output == "labels":
        return upsampled_labels(scores, size, top_k)
    raise ValueError(f"the inference output must be one of {OUTPUT_MODES}, got {output!r}")
