"""Sliding-window views of an image and the merging of their score maps.

Windows are laid out so that every window lands on whole cells of the output maps: with a 384 window whose
scores come out at 96x96, positions are multiples of 4 input pixels (one output cell); with a 336 window and
96x96 scores (ViT-L/14), multiples of 7 input pixels (two output cells). Merging never resamples a window.
"""
import math
from typing import List, Tuple

import torch
from torch.nn import functional as F


def window_starts(size: int, window: int, overlap: float, cell: int) -> List[int]:
    """Start offsets (input pixels) of windows covering ``size`` pixels, first at 0 and last at the far edge.

    Consecutive windows overlap by at least ``overlap`` of a window; all offsets are multiples of ``cell``.
    """
    if size <= window:
        return [0]
    stride = max(int(window * (1.0 - overlap)) // cell, 1)
    cells = (size - window) // cell
    count = math.ceil(cells / stride) + 1
    return [round(i * cells / (count - 1)) * cell for i in range(count)]


class SlidingWindow:
    """Cuts square images of ``size`` into ``window`` crops (plus one global view) and merges their scores.

    Args:
        size: side of the resized image; rounded up to a multiple of the input cell (see the module docstring).
        window: side of a window cut from the resized image.
        out_window: side of the score map the model returns for one view.
        overlap: minimum overlap between neighbouring windows, as a fraction of the window.
        view_size: side of the views handed to the model (its input size); windows of another size are resized
            bilinearly. None: ``window``.
    """

    def __init__(self, size: int, window: int, out_window: int, overlap: float, view_size: int = None):
        common = math.gcd(window, out_window)
        self.cell_in, self.cell_out = window // common, out_window // common
        self.size = math.ceil(size / self.cell_in) * self.cell_in
        self.window, self.out_window = window, out_window
        self.view_size = view_size or window
        starts = window_starts(self.size, window, overlap, self.cell_in)
        self.offsets: List[Tuple[int, int]] = [(y, x) for y in starts for x in starts]

    @property
    def num_views(self) -> int:
        return len(self.offsets) + 1

    def views(self, images: torch.Tensor) -> torch.Tensor:
        """images: [B, 3, size, size] -> [B * num_views, 3, view_size, view_size] (windows, then the global
        view)."""
        w, v = self.window, self.view_size
        crops = torch.stack([images[:, :, y : y + w, x : x + w] for y, x in self.offsets], dim=1).flatten(0, 1)
        if v != w:
            crops = F.interpolate(crops, size=(v, v), mode="bilinear", align_corners=False)
        whole = F.interpolate(images, size=(v, v), mode="bilinear", align_corners=False)
        return torch.cat((crops.unflatten(0, (len(images), -1)), whole[:, None]), dim=1).flatten(0, 1)

    def merge(self, scores: torch.Tensor) -> torch.Tensor:
        """scores: [B * num_views, N, out_window, out_window] -> [B, N, S, S], S = size * out_window / window.

        The windows are averaged where they overlap; that map and the upsampled global view count equally.
        """
        scores = scores.unflatten(0, (-1, self.num_views))
        B, _, N = scores.shape[:3]
        side, ow = self.size // self.cell_in * self.cell_out, self.out_window
        total = scores.new_zeros(B, N, side, side)
        count = scores.new_zeros(1, 1, side, side)
        for i, (y, x) in enumerate(self.offsets):
            y, x = y // self.cell_in * self.cell_out, x // self.cell_in * self.cell_out
            total[:, :, y : y + ow, x : x + ow] += scores[:, i]
            count[:, :, y : y + ow, x : x + ow] += 1
        global_view = F.interpolate(scores[:, -1], size=(side, side), mode="bilinear", align_corners=False)
        return (total / count + global_view) / 2
