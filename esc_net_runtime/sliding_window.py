"""Where the sliding windows of ESC-Net's inference protocol lie, in the input image and in the merged scores.

Windows are laid out so that every window lands on whole cells of the output maps: with a 384 window whose scores
come out at 96x96, positions are multiples of 4 input pixels (one output cell); with a 336 window and 96x96 scores
(ViT-L/14), multiples of 7 input pixels (two output cells). Merging never resamples a window.

The PyTorch protocol (:class:`esc_net.modeling.inference.SlidingWindow`) and the ONNX runtime
(:mod:`esc_net_runtime.protocol`) cut and merge their views by this one layout.
"""

import math
from typing import List, Optional, Tuple

__all__ = ["SlidingWindowLayout", "window_starts"]


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


class SlidingWindowLayout:
    """Square images of ``size`` cut into ``window`` crops (plus one global view), and where each crop's scores
    land in the merged map.

    Args:
        size: side of the resized image; rounded up to a multiple of the input cell (see the module docstring).
        window: side of a window cut from the resized image.
        out_window: side of the score map the model returns for one view.
        overlap: minimum overlap between neighbouring windows, as a fraction of the window.
        view_size: side of the views handed to the model (its input size); windows of another size are resized
            bilinearly. None: ``window``.

    Attributes:
        offsets: (y, x) of each window in the resized image, in input pixels, row by row.
        out_offsets: the same positions in the merged score map, in output pixels.
        out_side: side of the merged score map, ``size * out_window / window``.
    """

    def __init__(self, size: int, window: int, out_window: int, overlap: float, view_size: Optional[int] = None):
        common = math.gcd(window, out_window)
        self.cell_in, self.cell_out = window // common, out_window // common
        self.size = math.ceil(size / self.cell_in) * self.cell_in
        self.window, self.out_window = window, out_window
        self.view_size = view_size or window
        starts = window_starts(self.size, window, overlap, self.cell_in)
        self.offsets: List[Tuple[int, int]] = [(y, x) for y in starts for x in starts]
        self.out_offsets: List[Tuple[int, int]] = [
            (y // self.cell_in * self.cell_out, x // self.cell_in * self.cell_out) for y, x in self.offsets
        ]
        self.out_side = self.size // self.cell_in * self.cell_out

    @property
    def num_views(self) -> int:
        return len(self.offsets) + 1
