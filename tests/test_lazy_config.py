"""Detectron2's LazyConfig builds the models of the YAML configs (configs/*.py), and Detectron2's lazy-config
training script trains the tiny one."""

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
    return ESCNet(cfg)


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
        "vocabulary",
        "train_vocabulary",
    ):
        assert getattr(yacs, attribute) == getattr(lazy, attribute), attribute
    assert yacs.clip.templates == lazy.clip.templates


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
    ]  # random weights: no files needed
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-5000:]
    with open(out / "metrics.json") as f:
        rows = [json.loads(line) for line in f if "total_loss" in line]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert (out / "model_final.pth").is_file()
    assert "mIoU" in result.stdout + result.stderr  # the evaluation after training, on synthetic_shapes_val
