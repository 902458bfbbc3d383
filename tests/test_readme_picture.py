"""tools/readme_picture.py, the README's picture, on the embedded default's model with random weights."""

import os
import runpy
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from conftest import RANDOM_BACKBONES, REPO_ROOT
from esc_net.config import load_config

TOOL = os.path.join(REPO_ROOT, "tools", "readme_picture.py")
SHAPES_CONFIG = os.path.join(REPO_ROOT, "configs", "esc_net_tiny_shapes.yaml")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = build_model(load_config(SHAPES_CONFIG, RANDOM_BACKBONES))
    DetectionCheckpointer(model, save_dir=str(folder)).save("model_final")
    return str(folder / "model_final.pth")


def _run(monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", [TOOL, *argv])
    return runpy.run_path(TOOL, run_name="readme_picture")["main"]()


@pytest.mark.slow
def test_the_composed_picture_shows_the_pages_results(weights, tmp_path, monkeypatch, capsys):
    """Without a browser (or with --composed): the example image, the demo's overlay and the score map side by side
    over the legend, in a PNG no wider than --width and small enough for a README."""
    output = str(tmp_path / "readme.png")
    args = ["--config-file", SHAPES_CONFIG, "--output", output, "--width", "800", "--composed"]
    made = _run(monkeypatch, *args, "--opts", *RANDOM_BACKBONES, "MODEL.WEIGHTS", weights)
    assert made == "composed" and f"wrote {output} (composed" in capsys.readouterr().out
    picture = cv2.imread(output)
    assert picture.shape[1] == 800 and 0.3 < picture.shape[0] / picture.shape[1] < 0.8
    assert os.path.getsize(output) < 400 * 1024
    # three panels over a white legend strip: the top is an image, the bottom left a legend's text on white
    top, legend = picture[: picture.shape[0] // 2], picture[-20:, :200]
    assert top.std() > 20 and (legend == 255).mean() > 0.5 and (legend < 128).any()


@pytest.mark.slow
def test_the_picture_is_a_screenshot_when_a_browser_is_there(weights, tmp_path, monkeypatch):
    from esc_net.demo.browser import missing_browser

    if missing_browser():
        pytest.skip(f"no browser: {missing_browser()} is not installed")
    output = str(tmp_path / "readme.png")
    made = _run(
        monkeypatch,
        "--config-file",
        SHAPES_CONFIG,
        "--output",
        output,
        "--opts",
        *RANDOM_BACKBONES,
        "MODEL.WEIGHTS",
        weights,
    )
    picture = cv2.imread(output)
    assert made == "screenshot" and picture.shape[1] <= 960 and np.unique(picture.reshape(-1, 3), axis=0).shape[0] > 50
