"""Making SAM's knowledge reach the model: the projection's form, its aligned weights, the alignment stage and the
alignment term of the loss (esc_net/modeling/sam_projection.py, esc_net/pretrain/align.py)."""

import json
import os

import pytest
import torch
from detectron2.modeling import build_model

from conftest import TINY_CONFIG, tiny_cfg
from esc_net.data import synthetic_shapes as ss
from esc_net.modeling.sam_projection import build_image_projection
from esc_net.pretrain import cli
from esc_net.pretrain.align import align_projection


def _inputs(vocabulary=("red circle", "blue bar", "stripes")):
    torch.manual_seed(1)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    labels = torch.randint(0, len(vocabulary), (64, 64))
    return [{"image": image, "sem_seg": labels, "height": 64, "width": 64, "vocabulary": list(vocabulary)}]


@pytest.mark.parametrize("kind", ["linear", "mlp", "conv"])
def test_each_projection_form_runs_both_implementations_alike(kind):
    torch.manual_seed(0)
    fast = build_model(tiny_cfg("MODEL.ESC_NET.SAM_IMAGE_PROJECTION", kind)).eval()
    reference = build_model(
        tiny_cfg("MODEL.ESC_NET.SAM_IMAGE_PROJECTION", kind, "MODEL.ESC_NET.IMPLEMENTATION", "reference")
    ).eval()
    reference.load_state_dict(fast.state_dict())
    assert isinstance(fast.blocks[0].sam.image_proj[1], torch.nn.GELU) == (kind != "linear")
    assert fast.blocks[0].sam.image_proj[0].kernel_size == ((3, 3) if kind == "conv" else (1, 1))
    with torch.no_grad():
        torch.testing.assert_close(fast(_inputs())[0]["sem_seg"], reference(_inputs())[0]["sem_seg"])


def test_an_unknown_projection_is_refused_by_its_key():
    with pytest.raises(ValueError, match="SAM_IMAGE_PROJECTION must be one of"):
        build_model(tiny_cfg("MODEL.ESC_NET.SAM_IMAGE_PROJECTION", "transformer"))


@pytest.fixture
def aligned_file(tmp_path):
    torch.manual_seed(3)
    path = str(tmp_path / "projection.pth")
    torch.save(build_image_projection("mlp", 32, 32).state_dict(), path)
    return path


def test_aligned_weights_load_into_every_block_unless_model_weights_are_given(aligned_file, tmp_path):
    state = torch.load(aligned_file, weights_only=True)
    opts = ("MODEL.ESC_NET.SAM_IMAGE_PROJECTION", "mlp", "MODEL.ESC_NET.SAM_PROJECTION_WEIGHTS", aligned_file)
    model = build_model(tiny_cfg(*opts))
    for block in model.blocks:
        for key, value in state.items():
            torch.testing.assert_close(block.sam.image_proj.state_dict()[key], value)
    # MODEL.WEIGHTS holds every tensor: the aligned file is not even read
    missing = str(tmp_path / "gone.pth")
    build_model(tiny_cfg(*opts[:2], "MODEL.ESC_NET.SAM_PROJECTION_WEIGHTS", missing, "MODEL.WEIGHTS", "model.pth"))
    with pytest.raises(FileNotFoundError, match="esc-net-pretrain align"):
        build_model(tiny_cfg(*opts[:2], "MODEL.ESC_NET.SAM_PROJECTION_WEIGHTS", missing))


def test_aligned_weights_of_another_form_are_refused_with_their_keys(aligned_file):
    with pytest.raises(ValueError, match=r"does not fit the SAM blocks' image projection.*unexpected keys \['2.bias'"):
        build_model(tiny_cfg("MODEL.ESC_NET.SAM_PROJECTION_WEIGHTS", aligned_file))


def test_the_alignment_term_keeps_only_the_projection_near_its_aligned_weights(aligned_file):
    opts = ["MODEL.ESC_NET.SAM_IMAGE_PROJECTION", "mlp", "MODEL.ESC_NET.SAM_PROJECTION_WEIGHTS", aligned_file]
    with pytest.raises(ValueError, match="SAM_ALIGN_LOSS_WEIGHT > 0 keeps"):
        build_model(tiny_cfg(*opts[:2], "MODEL.ESC_NET.SAM_ALIGN_LOSS_WEIGHT", "1.0"))
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*opts, "MODEL.ESC_NET.SAM_ALIGN_LOSS_WEIGHT", "2.0")).train()
    assert not any("anchor" in key for key in model.state_dict())  # checkpoints do not change
    losses = model(_inputs())
    assert losses["loss_sam_align"].item() == 0.0  # at the aligned weights
    with torch.no_grad():
        model.blocks[1].sam.image_proj[0].weight.add_(0.5)
    losses = model(_inputs())
    assert losses["loss_sam_align"].item() > 0
    model.zero_grad()
    losses["loss_sam_align"].backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all(".sam.image_proj." in name for name in with_grad)
    assert any(name.startswith("blocks.1.") for name in with_grad)
    plain = build_model(tiny_cfg(*opts)).train()
    assert "loss_sam_align" not in plain(_inputs())


@pytest.fixture(scope="module")
def shapes_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    os.environ["DETECTRON2_DATASETS"] = str(root)
    ss.generate_synthetic_shapes(num_train=24, num_val=4)
    yield root
    del os.environ["DETECTRON2_DATASETS"]


def test_the_alignment_stage_fits_sams_embedding_and_its_output_loads_through_the_config(
    shapes_world, sam_file, tmp_path
):
    output = str(tmp_path / "aligned.pth")
    argv = ["align", "--config-file", TINY_CONFIG, "--output", output, "--steps", "40", "--batch-size", "8"]
    opts = ["MODEL.ESC_NET.SAM_CHECKPOINT", sam_file, "MODEL.ESC_NET.SAM_IMAGE_PROJECTION", "mlp"]
    opts += ["DATASETS.TRAIN", "('synthetic_shapes_train',)", "DATASETS.TEST", "('synthetic_shapes_val',)"]
    report = cli.pretrain(argv + ["--opts", *opts])
    assert report["held_out"]["r2"] > report["held_out"]["r2_initial"]  # it learnt SAM's embedding
    assert report["held_out"]["images"] == 4 and report["steps_done"] == 40
    with open(tmp_path / "aligned.json") as f:
        assert json.load(f)["sha256"] == report["sha256"]
    assert cli.pretrain(argv + ["--opts", *opts]) is None  # a finished stage is skipped
    model = build_model(tiny_cfg(*opts[:4], "MODEL.ESC_NET.SAM_PROJECTION_WEIGHTS", output))
    aligned = torch.load(output, weights_only=True)
    torch.testing.assert_close(model.blocks[1].sam.image_proj.state_dict()["2.weight"], aligned["2.weight"])


def test_the_alignment_stage_needs_a_whole_sam(shapes_world, tmp_path):
    with pytest.raises(ValueError, match="needs MODEL.ESC_NET.SAM_CHECKPOINT"):
        align_projection(tiny_cfg("DATASETS.TRAIN", "('synthetic_shapes_train',)"), str(tmp_path / "a.pth"))
    with pytest.raises(SystemExit, match="give --output"):
        cli.main(["align", "--config-file", TINY_CONFIG])
