"""The checks of what a one-image predictor is given, shared by ``esc_net.ESCNetPredictor`` and
:class:`esc_net_runtime.ONNXPredictor` so that both refuse the same input with the same message."""

from typing import Tuple

import numpy as np

__all__ = ["check_bgr_image", "check_output_size"]


def check_bgr_image(image_bgr: np.ndarray) -> Tuple[int, int]:
    """The (H, W) of an image as OpenCV gives it: an [H, W, 3] uint8 numpy array with H, W at least 1.

    Raises:
        ValueError: the image is not such an array (another type, shape or dtype), or a side is 0.
    """
    if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        shape = getattr(image_bgr, "shape", None)
        raise ValueError(
            f"expected a BGR image as an [H, W, 3] numpy array, got {type(image_bgr).__name__} of shape {shape}"
        )
    if image_bgr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image (0-255, as cv2.imread gives), got dtype {image_bgr.dtype}")
    height, width = image_bgr.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"the image is empty: {height}x{width} pixels (H x W)")
    return height, width


def check_output_size(output_size) -> Tuple[int, int]:
    """``output_size`` as (height, width) ints.

    Raises:
        ValueError: it is not two positive integers.
    """
    if (
        not isinstance(output_size, (tuple, list))
        or len(output_size) != 2
        or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in output_size)
    ):
        raise ValueError(f"output_size must be two positive integers (height, width), got {output_size!r}")
    return int(output_size[0]), int(output_size[1])
