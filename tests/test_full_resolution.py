"""Bounded-memory resampling: the tiled, class-chunked label map and top-k equal those of a full upsampling, and
the input image is shrunk as F.interpolate shrinks it."""

import pytest
import torch
from torch.nn import functional as F

from esc_net.modeling.full_resolution import full_resolution_output, label_dtype, resize_bilinear, upsampled_labels


@pytest.mark.parametrize("num_classes, size", [(3, (37, 53)), (150, (61, 29)), (300, (8, 9))])
def test_labels_and_top_k_equal_those_of_full_upsampling(num_classes, size):
    torch.manual_seed(0)
    scores = torch.rand(num_classes, 12, 16)
    full = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
    # A budget of 200 floats: tiles of a few pixels and class chunks of 64, so every loop runs many times.
    result = upsampled_labels(scores, size, top_k=3, budget=200)
    assert result["sem_seg_labels"].dtype == label_dtype(num_classes) and result["sem_seg_labels"].shape == size
    torch.testing.assert_close(result["sem_seg_labels"].long(), full.argmax(dim=0))
    top = full.topk(3, dim=0)
    torch.testing.assert_close(result["sem_seg_topk_labels"].long(), top.indices)
    torch.testing.assert_close(result["sem_seg_topk_scores"].float(), top.values, atol=1e-3, rtol=0)
    only_labels = upsampled_labels(scores, size, budget=200)
    assert set(only_labels) == {"sem_seg_labels"}
    torch.testing.assert_close(only_labels["sem_seg_labels"], result["sem_seg_labels"])


def test_ties_go_to_the_first_class_as_in_argmax():
    scores = torch.zeros(130, 2, 2)  # 130 classes: three chunks, all equal
    assert (upsampled_labels(scores, (5, 5), budget=64)["sem_seg_labels"] == 0).all()


@pytest.mark.parametrize("size", [(7, 5), (64, 64), (3, 200)])
def test_resize_matches_interpolate_on_uint8_images(size):
    image = torch.randint(0, 256, (3, 50, 90), dtype=torch.uint8)
    expected = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(resize_bilinear(image, size), expected, atol=1e-4, rtol=0)


def test_bad_requests_are_refused():
    scores = torch.rand(4, 3, 3)
    with pytest.raises(ValueError, match="top_k must be in \\[0, 4\\]"):
        upsampled_labels(scores, (5, 5), top_k=5)
    scores[1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        upsampled_labels(scores, (5, 5))
    with pytest.raises(ValueError, match="must be one of"):
        full_resolution_output(torch.rand(4, 3, 3), (5, 5), output="probabilities")
