"""The inference protocol: sliding-window layout and merging."""

import pytest
import torch
from torch.nn import functional as F

from esc_net.modeling.inference import SlidingWindow
from esc_net_runtime.sliding_window import window_starts


def test_window_starts_cover_the_image_with_the_requested_overlap():
    assert window_starts(640, 384, 1 / 3, 4) == [0, 256]
    assert window_starts(384, 384, 1 / 3, 4) == [0]
    starts = window_starts(1000, 384, 1 / 3, 4)
    assert starts[0] == 0 and starts[-1] == 1000 - 384
    assert all(s % 4 == 0 for s in starts)
    assert all(b - a <= 384 * 2 / 3 for a, b in zip(starts, starts[1:]))


def test_layout_lands_on_output_cells_for_other_window_sizes():
    """A 336 window with 96x96 scores: cells of 7 input pixels = 2 output cells; the size rounds up."""
    sw = SlidingWindow(640, 336, 96, 1 / 3)
    assert sw.size == 644 and sw.size % 7 == 0
    assert all(y % 7 == 0 and x % 7 == 0 for y, x in sw.offsets)
    merged = sw.merge(torch.ones(2 * sw.num_views, 3, 96, 96))
    assert merged.shape == (2, 3, 184, 184)


def test_views_and_merge():
    sw = SlidingWindow(640, 384, 96, 1 / 3)
    assert sw.num_views == 5
    images = torch.arange(2 * 3 * 640 * 640, dtype=torch.float32).view(2, 3, 640, 640)
    views = sw.views(images)
    assert views.shape == (10, 3, 384, 384)
    torch.testing.assert_close(views[1], images[0, :, 0:384, 256:640])  # second window of image 0
    torch.testing.assert_close(views[5 + 3], images[1, :, 256:640, 256:640])  # last window of image 1

    # windows and the global view averaged: constant per-view scores give the mean of window mean and global
    scores = torch.zeros(10, 1, 96, 96)
    scores[:4] = 1.0  # image 0: windows 1, global 0
    scores[5:9] = 0.0
    scores[9] = 1.0  # image 1: windows 0, global 1
    merged = sw.merge(scores)
    assert merged.shape == (2, 1, 160, 160)
    torch.testing.assert_close(merged, torch.full_like(merged, 0.5))

    # a window's scores land where the window was cut from: mark window 3 (bottom right) only
    scores = torch.zeros(5, 1, 96, 96)
    scores[3] = 1.0
    merged = sw.merge(scores)[0, 0]
    assert merged[159, 159] == pytest.approx(0.5)  # only window 3 covers this corner
    assert merged[0, 0] == 0.0
    assert merged[80, 80] == pytest.approx(0.5 / 4)  # all four windows overlap in the centre


def test_vitl_config_uses_the_vitb_protocol():
    """ViT-L/14 at 336 evaluates the same five 384 windows of a 640 image as ViT-B/16 (and CAT-Seg), each resized
    to the CLIP input, rather than ten 336 crops of a 644 image."""
    from detectron2.config import get_cfg

    import esc_net
    from conftest import REPO_ROOT

    cfg = get_cfg()
    esc_net.add_esc_net_config(cfg)
    cfg.merge_from_file(f"{REPO_ROOT}/configs/esc_net_vitl_336.yaml")
    m = cfg.MODEL.ESC_NET
    sw = SlidingWindow(m.SLIDING_RESIZE, m.SLIDING_WINDOW, 96, m.SLIDING_OVERLAP, view_size=m.CLIP_IMAGE_SIZE)
    assert (sw.size, sw.window, sw.num_views) == (640, 384, 5)
    images = torch.rand(1, 3, 640, 640)
    views = sw.views(images)
    assert views.shape == (5, 3, 336, 336)
    expected = F.interpolate(images[:, :, 256:640, 0:384], size=(336, 336), mode="bilinear", align_corners=False)
    torch.testing.assert_close(views[2:3], expected)
    assert sw.merge(torch.rand(5, 2, 96, 96)).shape == (1, 2, 160, 160)
