"""Reading the images users give the demos, in bounded memory, and the size the demos draw them at.

Decoding costs H x W x 3 bytes whatever the file's size: a 389 KB PNG of 20000 x 20000 pixels decodes to 1.2 GB,
and OpenCV refuses a header of 40000 x 40000 only with its own error. :func:`read_image` therefore reads the
header first (Pillow parses it without decoding the pixels) and refuses an image over :class:`ImageLimits` before
anything is decoded. It also refuses a damaged JPEG: OpenCV decodes a cut file in part (the missing rows filled
in), even when an end-of-image marker was appended to it, and only prints libjpeg's warning, so every JPEG is first
decoded at 1/8 scale by libjpeg-turbo in strict mode (simplejpeg), which turns those warnings into errors.
"""

from typing import NamedTuple, Tuple

import cv2
import numpy as np
import simplejpeg
from PIL import Image

__all__ = [
    "FORMATS",
    "ImageLimits",
    "ImageTooLargeError",
    "UnreadableImageError",
    "display_size",
    "nearest_resize",
    "read_image",
    "resize_to",
]

# What the demos read (Pillow's format names); the page and the command line name them in their messages.
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")


class ImageLimits(NamedTuple):
    """The largest image the demos decode. The defaults keep a decoded image (3 bytes per pixel) under 51 MB."""

    max_side: int = 4096
    max_pixels: int = 4096 * 4096


class UnreadableImageError(ValueError):
    """A file that is not an image of :data:`FORMATS` that decodes whole. The message names the file."""


class ImageTooLargeError(UnreadableImageError):
    """An image whose header declares more pixels or a longer side than the limits allow (nothing was decoded).

    Attributes:
        width, height: the size the header declares (0 when Pillow refused it as a decompression bomb first).
    """

    def __init__(self, message: str, width: int = 0, height: int = 0):
        super().__init__(message)
        self.width, self.height = width, height


def _header(path: str, name: str) -> Tuple[str, int, int]:
    """(format, width, height) from the file's header, nothing decoded."""
    try:
        with Image.open(path, formats=FORMATS) as image:
            return image.format, image.width, image.height
    except Image.DecompressionBombError as e:
        # Pillow's own ceiling (about 179 M pixels) is far above any limit here; its message gives the count.
        raise ImageTooLargeError(f"{name} is too large to decode: {str(e).rstrip('.')}") from e
    except FileNotFoundError as e:
        raise UnreadableImageError(f"image not found: {name}") from e
    except Exception as e:
        # Pillow's parsers raise many types for a malformed header (OSError, SyntaxError, struct.error, ...):
        # whichever it is, the file is refused as unreadable with the parser's reason, in which the file is
        # called by ``name`` too (the page must not show the server's path).
        reason = str(e).replace(path, name)
        raise UnreadableImageError(
            f"cannot read the image {name}: not a {', '.join(FORMATS)} file that can be decoded "
            f"({type(e).__name__}: {reason})"
        ) from e


def _check_jpeg(path: str, name: str) -> None:
    """Decodes the JPEG at 1/8 scale in strict mode: libjpeg's recoverable errors (data cut short, a premature
    end-of-image marker, corrupt entropy data) raise instead of being filled in."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        colorspace = simplejpeg.decode_jpeg_header(data)[2]
        # OpenCV converts CMYK and grey JPEGs; the check decodes each in its own space, which libjpeg always can.
        output = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}.get(colorspace, "BGR")
        simplejpeg.decode_jpeg(data, colorspace=output, min_factor=8, strict=True)
    except ValueError as e:
        raise UnreadableImageError(
            f"the JPEG {name} is damaged or truncated ({e}): only part of it could be decoded; copy or export it again"
        ) from e


def read_image(path: str, limits: ImageLimits = ImageLimits(), name: str = "") -> np.ndarray:
    """The image at ``path`` as [H, W, 3] uint8 BGR (grey, 16-bit and CMYK images converted as OpenCV does).

    Args:
        path: a PNG, JPEG, BMP, TIFF or WebP file.
        limits: the largest side and pixel count accepted, checked on the header before decoding.
        name: what messages call the file (default ``path``; the web page gives the upload's own name rather
            than the server's path).

    Raises:
        ImageTooLargeError: the header declares an image over ``limits``.
        UnreadableImageError: the file is missing, not an image of :data:`FORMATS`, a damaged JPEG, or does not
            decode.
    """
    name = name or path
    kind, width, height = _header(path, name)
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"{name} is {width}x{height} pixels; the limits are sides up to {limits.max_side} pixels and "
            f"{limits.max_pixels:,} pixels in all",
            width,
            height,
        )
    if kind == "JPEG":
        _check_jpeg(path, name)
    try:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
    except cv2.error as e:  # OpenCV's own checks (pixel ceiling, corrupt data) raise rather than return None
        raise UnreadableImageError(f"cannot read the image {name}: OpenCV refuses it ({e})") from e
    if image is None:
        raise UnreadableImageError(f"cannot read the image {name}: OpenCV cannot decode it (corrupt or truncated)")
    return image


def display_size(height: int, width: int, max_side: int) -> Tuple[int, int]:
    """(h, w): the image's size shrunk, aspect kept, so that its longer side is at most ``max_side``."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_to(image_bgr: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """The [H, W, 3] image at (h, w) (area averaging, which shrinks without aliasing); itself if the size fits."""
    if image_bgr.shape[:2] == tuple(size):
        return image_bgr
    return cv2.resize(image_bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def nearest_resize(labels: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """The [H, W] label map (any integer dtype) at (h, w), each pixel taking the label under its centre."""
    if labels.shape == tuple(size):
        return labels
    rows = ((np.arange(size[0]) + 0.5) * labels.shape[0] / size[0]).astype(np.int64)
    cols = ((np.arange(size[1]) + 0.5) * labels.shape[1] / size[1]).astype(np.int64)
    return labels[rows[:, None], cols[None, :]]
