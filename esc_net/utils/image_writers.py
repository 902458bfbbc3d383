"""Writing images and label maps atomically (through a temporary file renamed into place), for the dataset
preparation commands and the Synthetic Shapes generator alike."""

import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

__all__ = ["copy_file", "write_label_png", "write_label_tiff16", "write_rgb_image"]


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Writes through a temporary file in the same folder and renames it, so ``path`` is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The process id keeps parallel workers apart; a leftover from a killed run is simply overwritten.
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.tmp"))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_label_png(path: Path, labels: np.ndarray) -> None:
    """Writes a uint8 label map [H, W] as a single-channel PNG."""
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ValueError(f"a PNG label map is a 2-D uint8 array, got {labels.dtype} of shape {labels.shape}")
    _atomic_write(path, lambda tmp: Image.fromarray(labels).save(tmp, format="PNG"))


def write_label_tiff16(path: Path, labels: np.ndarray) -> None:
    """Writes a uint16 label map [H, W] as a single-channel 16-bit TIFF (PIL mode "I;16", deflate)."""
    if labels.dtype != np.uint16 or labels.ndim != 2:
        raise ValueError(f"a 16-bit label map is a 2-D uint16 array, got {labels.dtype} of shape {labels.shape}")
    # Deflate keeps the files small (most maps have few distinct values); PIL reads them back as uint16.
    _atomic_write(path, lambda tmp: Image.fromarray(labels).save(tmp, format="TIFF", compression="tiff_adobe_deflate"))


# PIL format of each image file suffix an RGB image may be written with.
_RGB_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}


def write_rgb_image(path: Path, image: np.ndarray, jpeg_quality: int = 95) -> None:
    """Writes an RGB uint8 image [H, W, 3] as a JPEG or PNG, chosen by the suffix of ``path``."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"an RGB image is a uint8 array [H, W, 3], got {image.dtype} of shape {image.shape}")
    suffix = Path(path).suffix.lower()
    if suffix not in _RGB_FORMATS:
        raise ValueError(f"{path}: an RGB image is written as {sorted(_RGB_FORMATS)}, not {suffix!r}")
    options = {"quality": jpeg_quality} if _RGB_FORMATS[suffix] == "JPEG" else {}
    _atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format=_RGB_FORMATS[suffix], **options))


def copy_file(src: Path, dst: Path) -> None:
    """Copies ``src`` to ``dst`` atomically."""
    _atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
