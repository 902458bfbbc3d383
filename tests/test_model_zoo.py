"""The laboratory's model zoo (model_zoo/): the shipped weights are the ones their manifest describes, load through
the config keys exactly as real weights do, and the recorded runs can be reproduced."""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from conftest import REPO_ROOT
from esc_net.config import load_config
from esc_net.pretrain import cli
from esc_net.pretrain.clip import pretrain_clip
from esc_net.pretrain.common import sha256
from esc_net.pretrain.sam import pretrain_sam

ZOO = os.path.join(REPO_ROOT, "model_zoo")
CONFIG = os.path.join(REPO_ROOT, "configs", "esc_net_tiny_shapes.yaml")
# the trained embedded default (tools/ship_trained_default.py), beside the pre-trained weights it started from
TRAINED_DEFAULT = "esc_net_tiny_shapes.pth"
with open(os.path.join(ZOO, "manifest.json")) as f:
    MANIFEST = json.load(f)
# the first steps of a rerun give the recorded losses up to the rounding of a different thread count
FIRST_LOSSES_RTOL = 1e-3


def _cfg():
    return load_config(CONFIG, ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()"])


def test_every_shipped_file_is_the_one_its_manifest_describes():
    shipped = sorted(name for name in os.listdir(ZOO) if name.endswith((".pt", ".pth")))
    assert shipped == sorted(MANIFEST)
    for name, report in MANIFEST.items():
        path = os.path.join(ZOO, name)
        assert sha256(path) == report["sha256"] and os.path.getsize(path) == report["bytes"], name
        origin = report["provenance"]
        assert len(origin["commit"]) == 40 and origin["uncommitted_changes"] is False
        if name == TRAINED_DEFAULT:
            assert origin["command"] == "scripts/run_default.sh"
            assert report["iterations"] == _cfg().SOLVER.MAX_ITER
            assert set(report["zero_shot"]) == {"Shapes seen", "Shapes unseen", "Shapes all"}
        else:
            assert origin["command"].startswith("esc-net-pretrain ") and origin["threads"] >= 1
            assert report["steps_done"] == report["settings"]["steps"] >= 1
        with open(os.path.join(ZOO, os.path.splitext(name)[0] + ".json")) as f:
            assert json.load(f) == report  # the report beside the file is its manifest entry
    pre_trained = [n for n in MANIFEST if n.startswith(("clip_", "sam_tiny"))]
    assert sum(MANIFEST[n]["bytes"] for n in pre_trained) <= 25 * 2**20
    assert sum(report["bytes"] for report in MANIFEST.values()) <= 40 * 2**20


def test_the_trained_default_loads_strictly_and_segments():
    """The shipped trained default fits the laboratory's config key for key (a strict load) and segments an image
    into the classes of any vocabulary."""
    from esc_net.predictor import ESCNetPredictor

    cfg = _cfg()
    cfg.MODEL.WEIGHTS = os.path.join(ZOO, TRAINED_DEFAULT)
    predictor = ESCNetPredictor(cfg)
    image = np.zeros((64, 80, 3), np.uint8)
    image[16:48, 20:60] = (0, 0, 255)  # a red rectangle, in BGR
    labels = predictor(image, vocabulary=["background", "red bar", "blue circle"], output="labels")["sem_seg_labels"]
    assert labels.shape == (64, 80)


def test_the_config_reads_the_shipped_weights_as_it_reads_real_ones():
    cfg = _cfg()
    m = cfg.MODEL.ESC_NET
    assert {os.path.basename(p) for p in (m.CLIP_PRETRAINED, m.SAM_CHECKPOINT)} <= set(MANIFEST)
    assert all(reason is None for reason in cli.verify(cfg).values())
    model = build_model(cfg)
    clip_state = torch.load(os.path.join(REPO_ROOT, m.CLIP_PRETRAINED), weights_only=True)
    torch.testing.assert_close(model.clip.clip.state_dict()["visual.conv1.weight"], clip_state["visual.conv1.weight"])
    sam_state = torch.load(os.path.join(REPO_ROOT, m.SAM_CHECKPOINT), weights_only=True)
    key = "layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(
        model.blocks[0].sam.transformer.state_dict()[key], sam_state[f"mask_decoder.transformer.{key}"]
    )


@pytest.mark.parametrize("name", ["clip_tiny_shapes.pt", "sam_tiny_shapes.pth"])
def test_a_short_rerun_reproduces_the_recorded_first_losses(name, tmp_path):
    """The first steps (within the warm-up, where the learning rate does not depend on the run's length) of the
    recorded settings give the recorded losses."""
    report = MANIFEST[name]
    s = report["settings"]
    steps = min(5, s["warmup"])
    common = dict(steps=steps, batch_size=s["batch_size"], num_images=s["num_images"], lr=s["lr"], seed=s["seed"])
    common.update(weight_decay=s["weight_decay"], warmup=s["warmup"], eval_images=8)
    m = _cfg().MODEL.ESC_NET
    if name.startswith("clip"):
        rerun = pretrain_clip(
            m.CLIP_MODEL_CFG, s["image_size"], str(tmp_path / name), max_shapes=s["max_shapes"], **common
        )
    else:
        d = s["decoder"]
        sizes = (s["image_size"], d["embed_dim"], d["depth"], d["mlp_dim"], d["num_heads"])
        rerun = pretrain_sam(*sizes, str(tmp_path / name), **common)
    assert rerun["first_losses"] == pytest.approx(report["first_losses"][:steps], rel=FIRST_LOSSES_RTOL)


def test_shipping_a_trained_default_refuses_an_unfinished_run(tmp_path):
    spec = importlib.util.spec_from_file_location("ship", os.path.join(REPO_ROOT, "tools", "ship_trained_default.py"))
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    with pytest.raises(FileNotFoundError, match="model_final.pth not found: give the output folder of a finished"):
        ship.ship(str(tmp_path))
    assert sorted(os.listdir(ZOO)) == sorted(
        [*MANIFEST, *(os.path.splitext(n)[0] + ".json" for n in MANIFEST), "manifest.json"]
    )
