"""The vision-language backbone interface: chosen by name through a registry, open_clip's CLIP as its one
implementation, a second open_clip architecture through it, and the tools that find it by what it is."""

import math

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import nn

from conftest import tiny_cfg
from esc_net.modeling import VL_BACKBONE_REGISTRY, CLIPEncoder, VisionLanguageBackbone
from esc_net.solver import build_optimizer, lr_multipliers
from esc_net.utils.flops import count_parameters_per_stage

# A SigLIP-style open_clip model: open_clip's CustomTextCLIP (the text tower a module of its own), a logit bias
# beside the logit scale (SigLIP's sigmoid loss; scale 10, bias -10 at initialisation), a text tower without
# causal mask that pools its last token, an image tower without the pre-norm. Tiny: 64x64 inputs, a 4x4 grid.
SIGLIP_STYLE = {
    "embed_dim": 24,
    "custom_text": True,
    "init_logit_scale": math.log(10.0),
    "init_logit_bias": -10.0,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 48, "patch_size": 16, "head_width": 24, "no_ln_pre": True},
    "text_cfg": {
        "context_length": 16,
        "vocab_size": 49408,
        "width": 32,
        "heads": 2,
        "layers": 2,
        "no_causal_mask": True,
        "pool_type": "last",
        "proj_bias": True,
    },
}


def _siglip_style_cfg(*opts):
    cfg = tiny_cfg("MODEL.ESC_NET.CLIP_SKIP_LAYERS", [0, 1], *opts)
    cfg.MODEL.ESC_NET.CLIP_MODEL_CFG = CfgNode(SIGLIP_STYLE)
    return cfg


def test_a_second_open_clip_architecture_builds_trains_and_infers():
    """ESC-Net on a SigLIP-style open_clip model through the same interface: its sizes, its logit scale for the
    first prompts, scores of every class, and one training step whose gradients reach every trainable parameter,
    the custom text tower's q/v projections included, at the backbone's learning rate."""
    cfg = _siglip_style_cfg("SOLVER.CLIP_MULTIPLIER", 0.01)
    torch.manual_seed(0)
    model = build_model(cfg)
    backbone = model.clip
    assert type(backbone.clip).__name__ == "CustomTextCLIP" and isinstance(backbone, VisionLanguageBackbone)
    assert backbone.output_shape() == (24, 48, 16, (4, 4), 2)
    assert backbone.output_shape() == CLIPEncoder.output_shape_of(**CLIPEncoder.from_config(cfg))
    assert model.prompt_logit_scale.exp().item() == pytest.approx(10.0)
    assert not backbone.clip.logit_bias.requires_grad  # the contrastive bias takes no part in segmentation

    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8), "vocabulary": ["cat", "dog"]}])
    assert out[0]["sem_seg"].shape == (2, 50, 70) and torch.isfinite(out[0]["sem_seg"]).all()

    model.train()
    batch = [
        {"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8), "sem_seg": torch.randint(0, 3, (64, 64))}
        for _ in range(2)
    ]
    for x in batch:
        x["vocabulary"] = ["cat", "dog", "grass"]
    sum(model(batch).values()).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("clip.clip.text.") for n in trainable)
    # SAM's "not a point" padding token is used only by the classes with fewer kept pixels than points
    no_grad = [
        n for n, p in trainable.items() if "not_a_point" not in n and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert no_grad == []
    lr_of = {id(p): group["lr"] for group in build_optimizer(cfg, model).param_groups for p in group["params"]}
    text_q = next(p for n, p in trainable.items() if n.startswith("clip.clip.text.") and n.endswith("q_weight"))
    assert lr_of[id(text_q)] == pytest.approx(cfg.SOLVER.BASE_LR * 0.01)


class _Renamed(CLIPEncoder):
    """A backbone registered under a name of its own (here: CLIP with other arguments)."""


def test_the_backbone_is_chosen_by_its_registered_name():
    if "_Renamed" not in VL_BACKBONE_REGISTRY:
        VL_BACKBONE_REGISTRY.register(_Renamed)
    torch.manual_seed(0)
    assert type(build_model(tiny_cfg("MODEL.ESC_NET.BACKBONE", "_Renamed")).clip) is _Renamed
    with pytest.raises(KeyError, match="No object named 'NoSuchBackbone' found in 'VL_BACKBONE' registry"):
        build_model(tiny_cfg("MODEL.ESC_NET.BACKBONE", "NoSuchBackbone"))
    if "_NotABackbone" not in VL_BACKBONE_REGISTRY:
        VL_BACKBONE_REGISTRY.register(_NotABackbone)
    with pytest.raises(
        TypeError, match=r"MODEL\.ESC_NET\.BACKBONE '_NotABackbone' is .*, not a VisionLanguageBackbone"
    ):
        build_model(tiny_cfg("MODEL.ESC_NET.BACKBONE", "_NotABackbone"))


class _NotABackbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()


def test_tools_find_the_backbone_by_what_it_is_not_by_its_name():
    """The solver's LR multipliers and the per-stage counts follow the backbone and its image tower wherever they
    sit in the model."""
    torch.manual_seed(0)
    backbone = CLIPEncoder(tiny_cfg())
    model = nn.ModuleDict({"vision_language": backbone, "head": nn.Linear(4, 4)})
    multipliers = lr_multipliers(model, clip_multiplier=0.01, sam_multiplier=0.1)
    assert set(multipliers) == {n for n, _ in model.named_parameters() if n.startswith("vision_language.")}
    assert set(multipliers.values()) == {0.01}

    esc_net = build_model(tiny_cfg())
    stages = count_parameters_per_stage(esc_net)
    visual = sum(t.numel() for n, t in esc_net.state_dict().items() if n.startswith("clip.clip.visual."))
    assert stages["clip_image"] == visual
    assert stages["clip_text"] == sum(t.numel() for n, t in esc_net.clip.state_dict().items()) - visual
