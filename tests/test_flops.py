"""FLOPs and parameter counts (esc_net.utils.flops, tools/analyze_model.py) on the tiny config."""

import os
import runpy
import sys

import pytest
import torch
from detectron2.modeling import build_model
from fvcore.nn import FlopCountAnalysis
from torch.nn import functional as F

from conftest import REPO_ROOT, TINY_CLIP_CFG, TINY_CONFIG, tiny_cfg
from esc_net.utils.flops import (
    STAGES,
    baddbmm_flop_jit,
    count_flops,
    count_flops_per_stage,
    count_parameters_per_stage,
    sdpa_flop_jit,
    split_by_stage,
)

IMAGE = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
VOCABULARY = ["red circle", "blue square", "green triangle"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg())


@pytest.fixture(scope="module")
def analysis(model):
    return count_flops(model, IMAGE, VOCABULARY)


@pytest.fixture(scope="module")
def stages(model, analysis):
    return split_by_stage(analysis.by_module(), model, root="model")


def test_sdpa_handle_counts_both_products():
    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    analysis = FlopCountAnalysis(Attention(), (q, k, v))
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
    # Q K^T: 2*3 x 5x7 outputs of 8 products; weights x V: 2*3 x 5x4 outputs of 7 products
    assert analysis.total() == 2 * 3 * 5 * 7 * 8 + 2 * 3 * 5 * 4 * 7


def test_baddbmm_handle_counts_the_product():
    class AddProduct(torch.nn.Module):
        def forward(self, x, a, b):
            return torch.baddbmm(x, a, b)

    analysis = FlopCountAnalysis(AddProduct(), (torch.randn(4), torch.randn(2, 3, 5), torch.randn(2, 5, 4)))
    analysis.set_op_handle("aten::baddbmm", baddbmm_flop_jit)
    assert analysis.total() == 2 * 3 * 5 * 4


def test_sams_cross_attentions_are_counted(analysis):
    """SAM's image-to-token attention ends in a batched product per class ([P, heads x tokens] weights times the
    [heads x tokens, E] projected values), and from the second layer on its scores are one too (positions times the
    folded [E, heads x tokens] keys): all of them enter the SAM stage's count."""
    m = tiny_cfg().MODEL.ESC_NET
    vision = TINY_CLIP_CFG["vision_cfg"]
    positions = (vision["image_size"] // vision["patch_size"]) ** 2
    tokens = 1 + m.NUM_POINTS + 1  # the text token, the points, SAM's padding point
    per_product = len(VOCABULARY) * positions * m.SAM_NUM_HEADS * tokens * m.SAM_EMBED_DIM
    per_op = analysis.by_module_and_operator()
    assert per_op["model.blocks.0.sam"]["baddbmm"] == (2 * m.SAM_DEPTH - 1) * per_product


def test_stages_add_up_and_cover_the_model(stages):
    assert list(stages) == [*STAGES, "total"]
    assert sum(stages[s] for s in STAGES) == stages["total"]
    assert all(isinstance(v, int) for v in stages.values())
    # The prompt generator holds no matrix product; everything else does real work.
    assert stages["ppg"] == 0
    assert all(stages[s] > 0 for s in STAGES if s != "ppg")
    # "other" (correlation, output projections, merges, resizing) is a small remainder
    assert stages["other"] < 0.05 * stages["total"]


def test_attention_is_counted(analysis):
    per_op = analysis.by_module_and_operator()
    vision = TINY_CLIP_CFG["vision_cfg"]
    tokens = (vision["image_size"] // vision["patch_size"]) ** 2 + 1  # patches and the class token
    # every image block that attends: softmax(Q K^T) V over all heads, width = heads x head width, for Q, K, V of one
    # view (CAT-Seg's dense last layer, the default, reads no attention in the last block)
    m = tiny_cfg().MODEL.ESC_NET
    attending = vision["layers"] - (m.CLIP_DENSE_LAYER == "value")
    expected = attending * tokens * tokens * 2 * vision["width"]
    assert per_op["model.clip.clip.visual"]["scaled_dot_product_attention"] == expected
    # The VLF image guidance's Swin blocks (window attention through SDPA): every class map, window and head,
    # Q K^T and the weights times V.
    window = m.WINDOW_SIZE
    grid = vision["image_size"] // vision["patch_size"]
    per_window = 2 * window**4 * m.HIDDEN_DIM  # both products, all heads (heads x head width = HIDDEN_DIM)
    expected = m.SWIN_DEPTH * len(VOCABULARY) * (grid // window) ** 2 * per_window
    assert per_op["model.blocks.0.vlf.image_guidance"]["scaled_dot_product_attention"] == expected


def test_counts_scale_with_the_vocabulary(model, stages):
    doubled = count_flops_per_stage(model, IMAGE, VOCABULARY + ["yellow circle", "sky", "road"])
    assert doubled["clip_image"] == stages["clip_image"]
    # one prompt per class, and every block refines each class map alone (the text guidance's linear attention
    # sums over classes, so it too is linear in N)
    for stage in ("clip_text", "vlf_image", "vlf_text"):
        assert doubled[stage] == 2 * stages[stage], stage
    # the SAM block and the decoder project CLIP features once per image, then work once per class
    for stage in ("sam", "decoder"):
        assert stages[stage] < doubled[stage] < 2 * stages[stage], stage


def test_count_does_not_depend_on_the_class_chunk(stages):
    """CLASS_CHUNK (on the CPU) only bounds memory: nothing that depends on the image alone is recomputed per chunk
    of classes, so every stage counts the same as all classes at once (as on a GPU, where chunks are off)."""
    counts = {}
    for chunk in (0, 1):
        torch.manual_seed(0)
        model = build_model(tiny_cfg("MODEL.ESC_NET.CLASS_CHUNK", chunk))
        counts[chunk] = count_flops_per_stage(model, IMAGE, VOCABULARY)
    for stage in stages:
        # fvcore counts an einsum from numpy's path estimate, printed to 4 significant digits: summing the counts of
        # the chunks' einsums can differ from the count of one einsum over all classes in that last digit
        assert counts[0][stage] == pytest.approx(stages[stage], rel=1e-4), stage
        assert counts[1][stage] == pytest.approx(stages[stage], rel=1e-4), stage


def test_sliding_window_counts_every_view(stages):
    torch.manual_seed(0)
    sliding = build_model(tiny_cfg("MODEL.ESC_NET.INFERENCE_MODE", "sliding"))
    views = sliding.inference.num_views
    assert views > 1
    image = torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8)
    s = count_flops_per_stage(sliding, image, VOCABULARY)
    # every view costs what the whole-image view does (both are CLIP_IMAGE_SIZE squares)
    assert s["clip_image"] == views * stages["clip_image"]
    assert s["decoder"] == views * stages["decoder"]
    assert s["clip_text"] == stages["clip_text"]  # the vocabulary is encoded once per call


def test_model_is_left_as_it_was(model, stages):
    model.train()
    try:
        flags = {name: p.requires_grad for name, p in model.named_parameters()}
        generators = [block.prompt_generator for block in model.blocks]
        with torch.no_grad():
            model.clip.encode_text(VOCABULARY)  # cached now: the count must still run the text tower
        again = count_flops_per_stage(model, IMAGE, VOCABULARY)
        assert again == stages
        assert model.training
        assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
        assert [block.prompt_generator for block in model.blocks] == generators
    finally:  # the module's other tests share this model
        model.eval()


def test_parameters_per_stage(model):
    weights = count_parameters_per_stage(model)
    trainable = count_parameters_per_stage(model, trainable_only=True)
    assert weights["total"] == sum(t.numel() for t in model.state_dict().values())
    assert trainable["total"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(weights[s] for s in STAGES) == weights["total"]
    assert weights["ppg"] == 0 and weights["sam"] > 0
    clip_vision = sum(t.numel() for n, t in model.state_dict().items() if n.startswith("clip.clip.visual."))
    assert weights["clip_image"] == clip_vision


def test_analyze_model_tool(capsys, monkeypatch):
    argv = [
        "analyze_model.py",
        "--config-file",
        TINY_CONFIG,
        "--classes",
        "2",
        "--device",
        "cpu",
        "--max-depth",
        "1",
        "--opts",
        "MODEL.ESC_NET.NUM_BLOCKS",
        "1",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(os.path.join(REPO_ROOT, "tools", "analyze_model.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "Parameters per module" in out and "| blocks" in out
    assert "| stage " in out and "N=2" in out
    for stage in STAGES:
        assert f"| {stage} " in out
    assert "without the text encoder" in out
