"""The SAM-transfer measurement and the inference knockouts (esc_net/evaluation/sam_transfer.py, knockouts.py)."""

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from conftest import tiny_cfg
from esc_net.evaluation.knockouts import KNOCKOUTS, knockout
from esc_net.evaluation.sam_transfer import clip_dense_features, fit_least_squares, sam_embedding, transfer_ious
from esc_net.pretrain.common import to_model_input
from esc_net.pretrain.sam import render_objects, sam_from_checkpoint, single_point_iou


@pytest.fixture(scope="module")
def objects():
    return render_objects(0, "test_objects", 6, 64)


def test_a_laboratory_sam_is_rebuilt_from_its_checkpoint_alone(sam_file, objects):
    sam = sam_from_checkpoint(sam_file, decoder_heads=2)
    state = torch.load(sam_file, weights_only=True)
    assert all(torch.equal(sam.state_dict()[k], v) for k, v in state.items())
    assert sam.image_encoder.img_size == 64 and len(sam.image_encoder.blocks) == 4
    # SAM's own normalisation is the one its images were trained with
    images = torch.from_numpy(objects.images).permute(0, 3, 1, 2).float()
    torch.testing.assert_close((images - sam.pixel_mean) / sam.pixel_std, to_model_input(objects.images))


def test_a_checkpoint_without_an_image_encoder_or_of_other_sizes_is_refused_by_name(sam_file, tmp_path):
    state = torch.load(sam_file, weights_only=True)
    decoder_only = tmp_path / "decoder_only.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("image_encoder.")}, decoder_only)
    with pytest.raises(ValueError, match="decoder_only.pth holds no SAM image encoder"):
        sam_from_checkpoint(str(decoder_only), decoder_heads=2)
    extra = tmp_path / "extra.pth"
    torch.save({**state, "mask_decoder.extra": torch.zeros(1)}, extra)
    with pytest.raises(ValueError, match=r"unexpected keys \['mask_decoder.extra'\]"):
        sam_from_checkpoint(str(extra), decoder_heads=2)


def test_single_point_iou_reads_any_embedding_and_either_pick(sam_file, objects):
    sam = sam_from_checkpoint(sam_file, decoder_heads=2)
    own = single_point_iou(sam, objects, seed=0)
    given = single_point_iou(sam, objects, seed=0, embed=lambda images: sam.image_encoder(to_model_input(images)))
    assert own == given
    best = single_point_iou(sam, objects, seed=0, pick="best")
    assert best >= own  # the best of three masks is never worse than the one SAM's IoU head picks
    with pytest.raises(ValueError, match="pick"):
        single_point_iou(sam, objects, seed=0, pick="first")


def test_least_squares_recovers_a_linear_map():
    torch.manual_seed(0)
    features = torch.randn(3, 5, 4, 4)
    weight, bias = torch.randn(7, 5), torch.randn(7)
    targets = torch.einsum("ed,bdhw->behw", weight, features) + bias[:, None, None]
    fitted_weight, fitted_bias = fit_least_squares(features, targets)
    torch.testing.assert_close(fitted_weight, weight, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fitted_bias, bias, atol=1e-4, rtol=1e-4)


def test_transfer_rows_measure_the_same_points_with_each_embedding(sam_file, objects):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("MODEL.ESC_NET.SAM_CHECKPOINT", sam_file)).eval()
    sam = sam_from_checkpoint(sam_file, decoder_heads=2)
    fit_images = render_objects(1, "test_fit", 8, 64).images
    results = transfer_ious(model, sam, objects, fit_images, projections={"given": model.blocks[1].sam.image_proj})
    rows = ["sam_encoder", "block1", "block2", "random_projection", "least_squares", "given", "no_image"]
    assert list(results) == rows + ["least_squares_r2"]
    assert all(0 <= results[row] <= 100 for row in rows)
    assert results["given"] == results["block2"]
    assert results["sam_encoder"] == single_point_iou(sam, objects, seed=0, pick="best")
    # a block whose projection is the least-squares map gives the least-squares row
    weight, bias = fit_least_squares(
        clip_dense_features(model, fit_images),
        sam_embedding(sam, torch.from_numpy(fit_images).permute(0, 3, 1, 2), (8, 8)),
    )
    conv = torch.nn.Conv2d(weight.shape[1], weight.shape[0], 1)
    conv.weight.data, conv.bias.data = weight[:, :, None, None].clone(), bias.clone()
    model.blocks[0].sam.image_proj = conv
    again = transfer_ious(model, sam, objects, fit_images)
    assert again["block1"] == pytest.approx(again["least_squares"], abs=1e-6)


def _scores(model, inputs):
    with torch.no_grad():
        return model(inputs)[0]["sem_seg"]


@pytest.fixture(scope="module")
def trained_like_model():
    """The tiny model with random weights (its pseudo prompts differ from class to class) and one input of five
    classes."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    inputs = [{"image": image, "height": 64, "width": 64, "vocabulary": ["a", "b", "c", "d", "e"]}]
    return model, inputs


@pytest.mark.parametrize("kind", [k for k in KNOCKOUTS if k != "none"])
def test_each_knockout_changes_the_output_and_leaves_the_model_as_it_was(trained_like_model, kind):
    model, inputs = trained_like_model
    before = _scores(model, inputs)
    with knockout(model, "none"):
        torch.testing.assert_close(_scores(model, inputs), before, rtol=0, atol=0)
    with knockout(model, kind):
        changed = _scores(model, inputs)
    assert not torch.allclose(changed, before)
    torch.testing.assert_close(_scores(model, inputs), before, rtol=0, atol=0)
    assert all("forward" not in vars(block.prompt_generator) for block in model.blocks)


def test_no_sam_block_is_the_model_without_sam_blocks_with_the_same_weights(trained_like_model):
    model, inputs = trained_like_model
    without = build_model(tiny_cfg("MODEL.ESC_NET.USE_SAM_BLOCK", "False")).eval()
    state = {k: v for k, v in model.state_dict().items() if k in without.state_dict()}
    without.load_state_dict(state)
    with knockout(model, "no_sam_block"):
        torch.testing.assert_close(_scores(model, inputs), _scores(without, inputs))


@pytest.mark.parametrize("class_chunk", [16, 1])
def test_other_class_prompts_gives_each_class_the_next_ones(trained_like_model, class_chunk):
    """Across the whole vocabulary, also when the blocks run the classes in chunks (one class each here)."""
    model, inputs = trained_like_model
    seen = {"plain": [], "shifted": []}
    calls = seen["plain"]

    def record(module, args, kwargs):
        calls.append(args[2].clone())  # the points [B*n, N_o, 2] of a chunk of n classes

    chunks = [block.class_chunk for block in model.blocks]
    handle = model.blocks[0].sam.register_forward_pre_hook(record, with_kwargs=True)
    try:
        for block in model.blocks:
            block.class_chunk = class_chunk
        _scores(model, inputs)
        calls = seen["shifted"]
        with knockout(model, "other_class_prompts"):
            _scores(model, inputs)
    finally:
        handle.remove()
        for block, chunk in zip(model.blocks, chunks):
            block.class_chunk = chunk
    plain, shifted = torch.cat(seen["plain"]), torch.cat(seen["shifted"])
    torch.testing.assert_close(shifted, plain.roll(-1, dims=0))


def test_unknown_knockouts_and_models_without_sam_blocks_are_refused(trained_like_model):
    model, _ = trained_like_model
    with pytest.raises(ValueError, match="unknown knockout 'sideways'"):
        with knockout(model, "sideways"):
            pass
    without = build_model(tiny_cfg("MODEL.ESC_NET.USE_SAM_BLOCK", "False"))
    with pytest.raises(ValueError, match="needs SAM blocks"):
        with knockout(without, "no_mask_prompt"):
            pass


def test_knockout_masks_and_points_reach_sam_as_empty(trained_like_model):
    model, inputs = trained_like_model
    seen = {}

    def record(module, args, kwargs):
        seen["labels"], seen["masks"] = args[3].clone(), args[4].clone()

    handle = model.blocks[0].sam.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with knockout(model, "no_point_prompts"):
            _scores(model, inputs)
        assert (seen["labels"] == -1).all() and seen["masks"].abs().sum() > 0
        with knockout(model, "no_mask_prompt"):
            _scores(model, inputs)
        assert (seen["masks"] == 0).all() and (seen["labels"] == 1).any()
    finally:
        handle.remove()
    assert np.isfinite(_scores(model, inputs).numpy()).all()
