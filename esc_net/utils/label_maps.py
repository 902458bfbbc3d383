"""The integer type of a label map, one rule for every map the project writes, reads or returns.

A label map holds one class id per pixel, and the largest value of its type marks pixels to ignore (255 in a
uint8 map, 65535 in a uint16 map, as Detectron2's datasets do). A uint8 map therefore holds class ids 0..254
only: with 256 classes, class 255 could not be told from an ignored pixel. So a map is uint8 for up to 255
classes and uint16 above.

:func:`read_label_map` is the one reader of label map files (training and evaluation).
"""

import numpy as np
from detectron2.utils.file_io import PathManager
from PIL import Image

from esc_net_runtime.protocol import MAX_UINT8_CLASSES  # class ids 0..254; 255 is the ignore value

__all__ = ["MAX_UINT8_CLASSES", "ignore_value", "label_dtype", "read_label_map"]

_MAX_UINT16_CLASSES = int(np.iinfo(np.uint16).max)


def label_dtype(num_classes: int) -> np.dtype:
    """np.uint8 for up to 255 classes, np.uint16 for up to 65535, so that the ignore value is never a class id.

    Raises:
        ValueError: ``num_classes`` is below 1 or above 65535 (no 16-bit map can hold them and an ignore value).
    """
    if not 1 <= num_classes <= _MAX_UINT16_CLASSES:
        raise ValueError(
            f"a label map holds 1 to {_MAX_UINT16_CLASSES} classes (65535 is the ignore value), got {num_classes}"
        )
    return np.dtype(np.uint8 if num_classes <= MAX_UINT8_CLASSES else np.uint16)


def ignore_value(num_classes: int) -> int:
    """The ignore value of a label map of ``num_classes`` classes: the largest value of :func:`label_dtype`."""
    return int(np.iinfo(label_dtype(num_classes)).max)


def read_label_map(path: str) -> np.ndarray:
    """The label map file at ``path`` (PNG, TIFF, ...) as stored: [H, W], its own integer type (uint8, uint16).

    Raises:
        OSError: the file cannot be read or decoded whole (missing, not an image, truncated); the message names it.
        ValueError: it is not a single-channel integer image (an RGB picture, a float map); the message names it.
    """
    try:
        with PathManager.open(path, "rb") as f, Image.open(f) as image:
            labels = np.asarray(image)  # decodes the whole file: a truncated one raises here
    except FileNotFoundError:
        raise
    except Exception as e:
        # Pillow's decoders raise OSError, SyntaxError, ValueError, ... for a damaged file: the file is what the
        # message must name, with the decoder's reason.
        raise OSError(f"cannot read the label map {path}: {type(e).__name__}: {e}") from e
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"label map {path}: expected a single-channel integer image of class ids, got an array of shape "
            f"{labels.shape} and dtype {labels.dtype}"
        )
    return labels
