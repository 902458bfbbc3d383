"""Reading the demos' images (esc_net.demo.images): limits checked on the header before decoding, damaged JPEGs
refused, every refusal naming the file."""

import resource
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from esc_net.demo.images import (
    ImageLimits,
    ImageTooLargeError,
    UnreadableImageError,
    display_size,
    nearest_resize,
    read_image,
)


def png_bomb(path, width, height):
    """A black 1-bit PNG: a few KB on disk per thousand rows, 3 bytes per pixel once decoded."""
    Image.new("1", (width, height)).save(path, optimize=True)
    return str(path)


def png_with_header_size(path, width, height):
    """A 1x1 PNG whose header (IHDR) declares ``width`` x ``height``: its data ends long before that."""
    data = bytearray(cv2.imencode(".png", np.zeros((1, 1), np.uint8))[1].tobytes())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    path.write_bytes(bytes(data))
    return str(path)


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_png_bomb_is_refused_from_its_header(tmp_path):
    bomb = png_bomb(tmp_path / "bomb.png", 8000, 8000)  # 192 MB once decoded
    before, start = _peak_rss_mb(), time.perf_counter()
    with pytest.raises(ImageTooLargeError) as error:
        read_image(bomb)
    assert time.perf_counter() - start < 1 and _peak_rss_mb() - before < 50
    assert f"{bomb} is 8000x8000 pixels" in str(error.value) and "sides up to 4096" in str(error.value)
    assert (error.value.width, error.value.height) == (8000, 8000)


def test_limits_on_side_and_pixel_count(tmp_path):
    path = png_bomb(tmp_path / "wide.png", 300, 20)
    assert read_image(path, ImageLimits(max_side=300, max_pixels=6000)).shape == (20, 300, 3)
    with pytest.raises(ImageTooLargeError, match="sides up to 299 pixels"):
        read_image(path, ImageLimits(max_side=299, max_pixels=6000))
    with pytest.raises(ImageTooLargeError, match="5,999 pixels in all"):
        read_image(path, ImageLimits(max_side=300, max_pixels=5999))


def test_a_header_beyond_opencvs_ceiling_is_refused_not_a_cv2_error(tmp_path):
    path = png_with_header_size(tmp_path / "huge.png", 40000, 40000)
    with pytest.raises(ImageTooLargeError, match=f"{path} is too large to decode"):
        read_image(path, ImageLimits(max_side=10**6, max_pixels=10**10))
    with pytest.raises(ImageTooLargeError, match="is 40000x2000 pixels"):
        read_image(png_with_header_size(tmp_path / "big.png", 40000, 40000 // 20))  # under Pillow's own ceiling


@pytest.mark.parametrize("cut", ["end", "end with marker"])
def test_damaged_jpegs_are_refused(tmp_path, cut):
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    whole = cv2.imencode(".jpg", image)[1].tobytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(whole[: len(whole) // 2] + (b"\xff\xd9" if cut == "end with marker" else b""))
    assert cv2.imread(str(path)) is not None  # what OpenCV alone would segment
    with pytest.raises(UnreadableImageError, match=f"the JPEG {path} is damaged or truncated"):
        read_image(str(path))


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_whole_jpegs_of_every_colour_space_are_read(tmp_path, mode):
    path = tmp_path / f"{mode}.jpg"
    Image.new(mode, (40, 30), color=(90,) * len(mode)).save(path, quality=95)
    image = read_image(str(path))
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, cv2.imread(str(path), cv2.IMREAD_COLOR))


def test_other_formats_and_refusals_name_the_file(tmp_path):
    sixteen = tmp_path / "16bit.png"
    cv2.imwrite(str(sixteen), np.full((5, 7), 60000, np.uint16))
    assert read_image(str(sixteen)).shape == (5, 7, 3)
    for suffix in (".bmp", ".tif", ".webp"):
        cv2.imwrite(str(tmp_path / f"x{suffix}"), np.zeros((5, 7, 3), np.uint8))
        assert read_image(str(tmp_path / f"x{suffix}")).shape == (5, 7, 3)
    text = tmp_path / "text.png"
    text.write_text("not an image")
    with pytest.raises(UnreadableImageError, match=f"cannot read the image {text}: not a PNG, JPEG"):
        read_image(str(text))
    with pytest.raises(UnreadableImageError, match="cannot read the image upload.png"):
        read_image(str(text), name="upload.png")  # the page names the upload, not the server's path
    gif = tmp_path / "x.gif"
    Image.new("L", (4, 4)).save(gif)
    with pytest.raises(UnreadableImageError, match="not a PNG, JPEG, BMP, TIFF, WEBP file"):
        read_image(str(gif))
    with pytest.raises(UnreadableImageError, match="image not found"):
        read_image(str(tmp_path / "missing.png"))


def test_display_size_and_nearest_resize():
    assert display_size(6000, 8000, 2048) == (1536, 2048)
    assert display_size(80, 100, 2048) == (80, 100)
    assert display_size(1, 9000, 100) == (1, 100)
    labels = np.arange(12, dtype=np.int16).reshape(3, 4)
    np.testing.assert_array_equal(nearest_resize(labels, (6, 8)), labels.repeat(2, 0).repeat(2, 1))
    np.testing.assert_array_equal(nearest_resize(labels.repeat(2, 0).repeat(2, 1), (3, 4)), labels)
