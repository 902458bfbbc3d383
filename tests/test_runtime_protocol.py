"""The ONNX runtime's inference protocol in numpy (esc_net_runtime.protocol) computes what the PyTorch model's does:
resizing, sliding-window views and merge, passes over views, and the full-resolution output."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from esc_net.modeling import full_resolution
from esc_net.modeling.inference import InferenceProtocol, SlidingWindow
from esc_net_runtime import protocol
from esc_net_runtime.sliding_window import SlidingWindowLayout

# (size, window, out_window, overlap, view_size): the ViT-B/16 and ViT-L/14 layouts, and odd ones.
LAYOUTS = [(640, 384, 96, 1 / 3, 384), (640, 384, 96, 1 / 3, 336), (101, 48, 12, 0.3, 40), (203, 64, 24, 0.25, 64)]


def _torch(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


@pytest.mark.parametrize("size", [(7, 5), (64, 64), (3, 200), (120, 41)])
def test_image_resize_equals_pytorch_on_uint8_bgr_images(size):
    image = np.random.default_rng(0).integers(0, 256, size=(50, 90, 3), dtype=np.uint8)
    # a budget of 300 floats: bands of one or two rows, so the banding runs many times
    got = protocol.resize_image(image, size, budget=300)
    assert got.shape == (*size, 3) and got.dtype == np.float32
    chw = _torch(image.transpose(2, 0, 1))
    # the PyTorch model's resize, the same arithmetic: within one float32 step at 255 (1.5e-5)
    np.testing.assert_allclose(got, full_resolution.resize_bilinear(chw, size).permute(1, 2, 0).numpy(), atol=2e-5)
    # F.interpolate's, on the normalised image the model reads (CLIP's statistics)
    mean, std = np.array([122.8, 116.7, 104.1], dtype=np.float32), np.array([68.5, 66.6, 70.3], dtype=np.float32)
    expected = F.interpolate(chw[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose((got - mean) / std, (expected.permute(1, 2, 0).numpy() - mean) / std, atol=1e-5)


@pytest.mark.parametrize("in_size, out_size", [((12, 16), (37, 53)), ((96, 96), (160, 160)), ((33, 9), (5, 70))])
def test_map_resize_equals_interpolate(in_size, out_size):
    maps = np.random.default_rng(1).random((5, *in_size), dtype=np.float32)
    got = protocol.resize_maps(maps, out_size, budget=100)  # chunks of one map
    expected = F.interpolate(_torch(maps)[None], size=out_size, mode="bilinear", align_corners=False)[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_views_and_merge_equal_the_sliding_window_of_pytorch(layout):
    size, window, out_window, overlap, view_size = layout
    shared = SlidingWindowLayout(size, window, out_window, overlap, view_size=view_size)
    sliding = SlidingWindow(size, window, out_window, overlap, view_size=view_size)
    rng = np.random.default_rng(2)
    image = rng.standard_normal((3, shared.size, shared.size), dtype=np.float32)
    views = protocol.window_views(shared, image)
    assert views.shape == (shared.num_views, 3, view_size, view_size)
    np.testing.assert_allclose(views, sliding.views(_torch(image)[None]).numpy(), atol=1e-5, rtol=0)

    scores = rng.random((shared.num_views, 4, out_window, out_window), dtype=np.float32)
    merged = protocol.merge_windows(shared, scores)
    assert merged.shape == (4, shared.out_side, shared.out_side)
    np.testing.assert_allclose(merged, sliding.merge(_torch(scores))[0].numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_classes, cap, per_pass", [(3, 0, 7), (40, 10, 25), (5, 171, 0), (200, 171, 1024)])
def test_passes_group_the_views_as_the_pytorch_protocol(num_classes, cap, per_pass):
    views = np.arange(9, dtype=np.float32)[:, None, None, None] * np.ones((1, 3, 2, 2), dtype=np.float32)
    groups = []

    def score_views(group):
        groups.append(len(group))
        return group[:, :1].repeat(num_classes, axis=1)  # [V, N, 2, 2], each view's own values

    scores = protocol.score_in_passes(score_views, views, num_classes, cap, per_pass)
    np.testing.assert_array_equal(scores[:, 0, 0, 0], np.arange(9))

    reference = InferenceProtocol(
        mode="whole",
        sliding_resize=2,
        sliding_window=0,
        sliding_overlap=0.0,
        max_classes_per_view=cap,
        view_classes_per_pass=per_pass,
    )
    torch_groups = []

    def torch_score_views(model, group, text):
        torch_groups.append(len(group))
        return group

    reference.score_views = torch_score_views
    reference._score_in_passes(None, torch.from_numpy(views), torch.zeros(num_classes, 4))
    assert groups == torch_groups


@pytest.mark.parametrize("num_classes, size", [(3, (37, 53)), (150, (61, 29)), (300, (8, 9))])
def test_full_resolution_output_equals_pytorch(num_classes, size):
    scores = np.random.default_rng(3).random((num_classes, 12, 16), dtype=np.float32)
    expected = full_resolution.full_resolution_output(_torch(scores), size, "scores")["sem_seg"].numpy()
    got = protocol.full_resolution_output(scores, size, "scores")["sem_seg"]
    assert got.shape == (num_classes, *size) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)

    # labels and top-3, tiled finely (a budget of 200 floats) on both sides
    torch_labels = full_resolution.upsampled_labels(_torch(scores), size, top_k=3, budget=200)
    labels = protocol.upsampled_labels(scores, size, top_k=3, budget=200)
    assert set(labels) == {"sem_seg_labels", "sem_seg_topk_labels", "sem_seg_topk_scores"}
    assert labels["sem_seg_labels"].dtype == protocol.label_dtype(num_classes)
    assert labels["sem_seg_topk_scores"].dtype == np.float16
    # a pixel whose best scores are within float rounding of each other may rank them either way
    ordered = -np.sort(-expected, axis=0)
    clear = ordered[:-1] - ordered[1:] > 1e-6  # [N - 1, H, W]: rank r is clearly above rank r + 1
    assert clear[0].mean() > 0.99
    np.testing.assert_array_equal(labels["sem_seg_labels"][clear[0]], torch_labels["sem_seg_labels"].numpy()[clear[0]])
    for rank in range(3):
        # rank r is one class only where it is clearly below rank r - 1 and clearly above rank r + 1
        distinct = (clear[rank - 1] if rank else True) & (clear[rank] if rank < num_classes - 1 else True)
        got_rank, want_rank = labels["sem_seg_topk_labels"][rank], torch_labels["sem_seg_topk_labels"][rank].numpy()
        np.testing.assert_array_equal(got_rank[distinct], want_rank[distinct])
    np.testing.assert_allclose(
        labels["sem_seg_topk_scores"].astype(np.float32),
        torch_labels["sem_seg_topk_scores"].float().numpy(),
        atol=1e-3,
        rtol=0,
    )
    only_labels = protocol.full_resolution_output(scores, size, "labels")
    assert set(only_labels) == {"sem_seg_labels"}
    np.testing.assert_array_equal(only_labels["sem_seg_labels"][clear[0]], labels["sem_seg_labels"][clear[0]])


def test_ties_go_to_the_first_class_as_in_argmax():
    scores = np.zeros((130, 2, 2), dtype=np.float32)  # 130 classes: three chunks, all equal
    assert (protocol.upsampled_labels(scores, (5, 5), budget=64)["sem_seg_labels"] == 0).all()
    top = protocol.upsampled_labels(scores, (5, 5), top_k=3, budget=64)["sem_seg_topk_labels"]
    np.testing.assert_array_equal(top[:, 0, 0], [0, 1, 2])


@pytest.mark.parametrize("num_classes", [1, 255, 256, 32768, 32769])
def test_label_types_are_the_pytorch_models(num_classes):
    assert protocol.label_dtype(num_classes).name == str(full_resolution.label_dtype(num_classes)).split(".")[-1]


def test_bad_requests_are_refused_with_the_messages_of_pytorch():
    scores = np.random.default_rng(4).random((4, 3, 3), dtype=np.float32)
    for function in (protocol.upsampled_labels, full_resolution.upsampled_labels):
        values = scores if function is protocol.upsampled_labels else _torch(scores)
        with pytest.raises(ValueError, match=r"top_k must be in \[0, 4\] \(the number of classes\), got 5"):
            function(values, (5, 5), top_k=5)
    with pytest.raises(ValueError, match=r"must be one of \('scores', 'labels'\), got 'probabilities'"):
        protocol.full_resolution_output(scores, (5, 5), output="probabilities")
    scores[1, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"the model's scores hold NaN \(1 of 36 values\)"):
        protocol.upsampled_labels(scores, (5, 5))
