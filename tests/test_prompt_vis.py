"""Pictures of the pseudo prompts: the recorder, the drawing, the training-time TensorBoard images and the demo."""

import importlib.util
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage, TensorboardXWriter
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO_ROOT, TINY_CONFIG, tiny_cfg
from esc_net.utils.prompt_vis import (
    BlockPrompts,
    PromptRecorder,
    dominant_class,
    draw_block_prompts,
    draw_image_prompts,
)

VOCABULARY = ["red square", "green bar", "sky, heaven"]


def _image():
    """[64, 64, 3] uint8 RGB: a red square and a green bar on black."""
    image = np.zeros((64, 64, 3), np.uint8)
    image[8:36, 8:36] = (220, 30, 30)
    image[44:58, 4:60] = (30, 200, 30)
    return image


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg()).eval()


def test_recorder_keeps_what_each_generator_read_and_returned(model):
    """Also with classes generated in chunks: the record is the one map's prompts and exact K-means clusters."""
    model.blocks[0].vlf.class_chunk = 2  # class 1 in the first chunk, class 2 alone in the second
    image = torch.as_tensor(_image().transpose(2, 0, 1).copy())
    with PromptRecorder(model.blocks, image_index=0, class_index=1) as recorder:
        model([{"image": image, "vocabulary": VOCABULARY}])
    with PromptRecorder(model.blocks, image_index=0, class_index=2) as recorder2:
        model([{"image": image, "vocabulary": VOCABULARY}])
    model.blocks[0].vlf.class_chunk = 16
    assert len(recorder.records) == len(model.blocks) == 2
    # Block 1 reads the CLIP correlation of the whole-image view.
    with torch.no_grad():
        text = model.clip.encode_text(VOCABULARY)
        dense, _ = model.clip.encode_image(model._normalize(image)[None])
        corr = model.first_prompt_map(model.correlation(dense, text))  # block 1's map: CLIP's cosines, scaled
        prompts = model.blocks[0].prompt_generator(corr)
        clusters = model.blocks[0].prompt_generator.clusters(corr)
    for n, first in ((1, recorder.records[0]), (2, recorder2.records[0])):
        torch.testing.assert_close(first.corr, corr[0, n])
        torch.testing.assert_close(first.points, prompts.points[n])
        assert torch.equal(first.labels, prompts.labels[n])
        torch.testing.assert_close(first.mask, prompts.masks[n, 0])
        assert torch.equal(first.regions, clusters[n])
        assert torch.equal(first.regions >= 0, first.mask > 0)  # the clusters cover exactly the kept pixels
        real = first.points[first.labels == 1].long()
        # every pseudo point is the most probable pixel of its own cluster
        assert sorted(first.regions[real[:, 1], real[:, 0]].tolist()) == sorted(
            set(first.regions[first.regions >= 0].tolist())
        )
    first = recorder.records[0]
    # Block 2 reads block 1's refined map, a different one.
    assert not torch.allclose(recorder.records[1].corr, first.corr)
    # The hooks are gone after the context: a further call records nothing.
    recorder.records = [None, None]
    model([{"image": image, "vocabulary": VOCABULARY}])
    assert recorder.records == [None, None]


def test_recorder_rejects_a_class_outside_the_vocabulary(model):
    image = torch.as_tensor(_image().transpose(2, 0, 1).copy())
    with pytest.raises(IndexError, match="class 5 is outside the block's input of 1 image\\(s\\) x 3 class"):
        with PromptRecorder(model.blocks, image_index=0, class_index=5):
            model([{"image": image, "vocabulary": VOCABULARY}])


def _record(mask, points, labels, regions):
    mask = torch.tensor(mask, dtype=torch.float32)
    return BlockPrompts(
        corr=torch.randn(mask.shape),
        points=torch.tensor(points, dtype=torch.float32),
        labels=torch.tensor(labels),
        mask=mask,
        regions=torch.tensor(regions),
    )


def test_drawing_shows_the_record():
    image = _image()
    mask = np.zeros((8, 8), np.float32)
    mask[1:4, 1:4] = 1.0
    regions = np.where(mask > 0, 0, -1)
    a = draw_block_prompts(image, _record(mask, [[2, 2]], [1], regions), "red square", "block 1")
    mask[6:8, 0:8] = 0.5
    regions[6:8, 0:8] = 1
    b = draw_block_prompts(image, _record(mask, [[2, 2], [4, 7]], [1, 1], regions), "red square", "block 1")
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    assert a.shape == b.shape and a.shape[1] > 4 * a.shape[0]  # one row of five panels
    assert not np.array_equal(a, b)  # the kept region, regions and points are drawn


def test_dominant_class():
    labels = torch.tensor([[2, 2, 255], [1, 2, 255], [255, 255, 255]])
    assert dominant_class(labels, 3, 255) == 2
    assert dominant_class(torch.full((2, 2), 255), 3, 255) == 0


def test_training_puts_one_picture_per_block_into_tensorboard(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("VIS_PERIOD", 2)).train()
    label = torch.full((64, 64), 255, dtype=torch.long)
    label[44:58, 4:60] = 1  # the green bar holds every labelled pixel: its class is the one drawn
    label[0, 0] = 0
    image = torch.as_tensor(_image().transpose(2, 0, 1).copy())
    inputs = [{"image": image, "sem_seg": label, "vocabulary": VOCABULARY}]
    with EventStorage(start_iter=0) as storage:
        model(inputs)
        pictures = {name: image for name, image, _ in storage._vis_data}
        assert sorted(pictures) == ["pseudo_prompts/block1", "pseudo_prompts/block2"]
        picture = pictures["pseudo_prompts/block2"]
        assert picture.dtype == torch.uint8 and picture.shape[0] == 3 and picture.shape[2] > 4 * picture.shape[1]
        # the same picture as block 2's prompts of "green bar" for that image (recorded at inference)
        with PromptRecorder(model.blocks, image_index=0, class_index=1) as recorder:
            model.eval()([{"image": image, "vocabulary": VOCABULARY}])
        model.train()
        expected = draw_block_prompts(_image(), recorder.records[1], "green bar", "block 2, iteration 0")
        np.testing.assert_array_equal(picture.permute(1, 2, 0).numpy(), expected)
        TensorboardXWriter(str(tmp_path)).write()
        storage.iter = 1  # not a multiple of VIS_PERIOD: no picture
        model(inputs)
        assert storage._vis_data == []
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["pseudo_prompts/block1", "pseudo_prompts/block2"]


def test_training_without_vis_period_draws_nothing(model):
    label = torch.zeros(64, 64, dtype=torch.long)
    model.train()
    try:
        with EventStorage(start_iter=0) as storage:
            model(
                [
                    {
                        "image": torch.as_tensor(_image().transpose(2, 0, 1).copy()),
                        "sem_seg": label,
                        "vocabulary": VOCABULARY,
                    }
                ]
            )
            assert storage._vis_data == []
    finally:
        model.eval()


def _demo():
    spec = importlib.util.spec_from_file_location("esc_net_demo_prompts", os.path.join(REPO_ROOT, "demo", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_show_prompts(tmp_path, model):
    weights = tmp_path / "model.pth"
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    cv2.imwrite(str(tmp_path / "shapes.png"), _image()[:, :, ::-1])
    demo = _demo()
    common = [
        "--config-file",
        TINY_CONFIG,
        "--input",
        str(tmp_path / "shapes.png"),
        "--output",
        str(tmp_path),
        "--vocabulary",
        "; ".join(VOCABULARY),
    ]
    opts = [
        "--opts",
        "DATASETS.TRAIN",
        "()",
        "DATASETS.TEST",
        "()",
        "MODEL.WEIGHTS",
        str(weights),
        "MODEL.ESC_NET.INFERENCE_MODE",
        "sliding",
    ]
    demo.main(common + ["--show-prompts", "sky"] + opts)  # a class by its first synonym
    picture = cv2.imread(str(tmp_path / "shapes_prompts.png"))
    row = draw_block_prompts(
        _image(), _record(np.ones((8, 8)), [[0, 0]], [1], np.zeros((8, 8), np.int64)), "sky", "block 1"
    )
    assert picture.shape == (2 * row.shape[0], row.shape[1], 3)  # one row per block

    with pytest.raises(SystemExit, match="--show-prompts 'dog' is not a class of the vocabulary"):
        demo.main(common + ["--show-prompts", "dog"] + opts)


def test_model_without_sam_blocks_trains_with_vis_period_and_draws_no_prompts():
    """The USE_SAM_BLOCK ablation has no pseudo prompts: training with VIS_PERIOD puts no picture (instead of
    failing), and asking the demo's drawing for prompts is refused with a message."""
    torch.manual_seed(0)
    model = build_model(
        tiny_cfg("VIS_PERIOD", 1, "MODEL.ESC_NET.USE_SAM_BLOCK", False, "MODEL.ESC_NET.BLOCK_LOSS_WEIGHT", 0.0)
    ).train()
    image = torch.as_tensor(_image().transpose(2, 0, 1).copy())
    inputs = [{"image": image, "sem_seg": torch.ones(64, 64, dtype=torch.long), "vocabulary": VOCABULARY}]
    with EventStorage(start_iter=0) as storage:
        assert torch.isfinite(sum(model(inputs).values()))
        assert storage._vis_data == []

    class Predictor:
        vocabulary = VOCABULARY

    Predictor.model = model
    with pytest.raises(ValueError, match="no SAM blocks"):
        draw_image_prompts(Predictor(), _image()[:, :, ::-1].copy(), 0)
