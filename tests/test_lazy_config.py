"""The LazyConfig files (configs/*.py) are the YAML configs in LazyConfig form: Detectron2's LazyConfig builds the same
models, a change of one argument carries to the parts that derive from it, and Detectron2's lazy-config training
script trains the tiny one."""

import json
import os
import subprocess
import sys

import detectron2
import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate

import esc_net
from conftest import REPO_ROOT
from esc_net.data import resolve_vocabularies
from esc_net.data import synthetic_shapes as ss
from esc_net.modeling import ESCNet

# Detectron2's own training script for LazyConfig files (tools/ of a checkout, or of the wheel's files).
LAZY_TRAIN_NET = os.path.join(os.path.dirname(os.path.dirname(detectron2.__file__)), "tools", "lazyconfig_train_net.py")


def _yacs_model(config_file):
    cfg = get_cfg()
    esc_net.add_esc_net_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", config_file))
    cfg.MODEL.ESC_NET.CLIP_PRETRAINED = "none"  # random weights: only the structure is compared
    cfg.MODEL.ESC_NET.SAM_CHECKPOINT = ""
    return ESCNet(resolve_vocabularies(cfg))


def _lazy_model(config_file):
    cfg = LazyConfig.load(os.path.join(REPO_ROOT, "configs", config_file))
    cfg.model.clip.pretrained = "none"
    cfg.model.blocks.sam_checkpoint = ""
    return instantiate(cfg.model)


@pytest.mark.parametrize("name", ["esc_net_vitb_384", "esc_net_tiny_shapes"])
def test_lazy_config_builds_the_model_of_the_yaml_config(name):
    """Same parameter and buffer names and shapes, the same trainable parameters, inference protocol, settings and
    default vocabularies. Built on the meta device: structure without memory or initialisation (ViT-B in 1 s)."""
    with torch.device("meta"):
        yacs, lazy = _yacs_model(f"{name}.yaml"), _lazy_model(f"{name}.py")
    assert next(yacs.parameters()).is_meta
    shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in (yacs, lazy)]
    assert shapes[0] == shapes[1]
    trainable = [{k for k, p in m.named_parameters() if p.requires_grad} for m in (yacs, lazy)]
    assert trainable[0] == trainable[1]
    assert yacs.inference._settings == lazy.inference._settings
    for attribute in (
        "loss",
        "block_loss_weight",
        "ignore_value",
        "input_format",
        "inference_output",
        "implementation",
        "vocabulary",
        "train_vocabulary",
    ):
        assert getattr(yacs, attribute) == getattr(lazy, attribute), attribute
    assert yacs.clip.templates == lazy.clip.templates


def test_a_change_carries_to_the_parts_that_derive_from_it():
    """The sizes the blocks, the decoder and the inference protocol are built for follow the backbone's arguments,
    the decoder's width and the crops follow the blocks' and the backbone's: nothing is a copied number."""
    cfg = LazyConfig.load(os.path.join(REPO_ROOT, "configs", "esc_net_tiny_shapes.py"))
    cfg.model.clip.pretrained, cfg.model.blocks.sam_checkpoint = "none", ""
    cfg.model.clip.image_size = 96  # a 12x12 grid of 8-pixel patches
    cfg.model.clip.skip_layers = [0, 1, 2]  # a decoder stage more
    cfg.model.decoder.decoder_dims, cfg.model.decoder.guidance_dims = [32, 16, 8], [16, 8, 4]
    cfg.model.blocks.hidden_dim = 16
    cfg.model.blocks.prompts.num_points = 4
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert model.blocks[0].sam.grid_size == model.blocks[0].vlf.grid_size == (12, 12)
    assert model.blocks[0].prompt_generator.num_points == 4
    assert model.corr_embed.out_channels == model.decoder.stages[0].conv_x.in_channels == 16
    assert (model.inference.image_size, model.inference.out_size) == (96, 96)  # 12 cells, upsampled 8x
    assert cfg.dataloader.train.mapper.crop_size == 96


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(LAZY_TRAIN_NET), reason=f"Detectron2's {LAZY_TRAIN_NET} is not installed")
def test_detectron2_lazy_training_script_trains_the_tiny_config(tmp_path):
    datasets = tmp_path / "datasets"
    ss.generate_synthetic_shapes(root=str(datasets), num_train=4, num_val=2)
    out = tmp_path / "out"
    config = os.path.join(REPO_ROOT, "configs", "esc_net_tiny_shapes.py")
    command = [
        sys.executable,
        LAZY_TRAIN_NET,
        "--config-file",
        config,
        f"train.output_dir={out}",
        "train.max_iter=3",
        "train.log_period=1",
        "train.checkpointer.period=3",
        "dataloader.train.total_batch_size=2",
        "model.clip.pretrained=none",
        "model.blocks.sam_checkpoint=",
        "model.blocks.sam_projection_weights=",
        "model.projection_anchor=None",
        "model.align_loss_weight=0.0",
    ]  # random weights: no files needed (the model zoo's are relative to the repository, not to cwd)
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-5000:]
    with open(out / "metrics.json") as f:
        rows = [json.loads(line) for line in f if "total_loss" in line]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert (out / "model_final.pth").is_file()
    assert "mIoU" in result.stdout + result.stderr  # the evaluation after training, on synthetic_shapes_val
