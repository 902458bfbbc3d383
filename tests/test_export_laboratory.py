"""The laboratory's trained default exported by esc-net-export and run by esc_net_runtime.ONNXPredictor, on the
laboratory's own images: the label maps of the PyTorch predictor; the demo and the page with --backend
onnxruntime."""

import os

import cv2
import numpy as np
import pytest

from conftest import REPO_ROOT
from esc_net.config import load_config
from esc_net.data.synthetic_shapes import benchmark, render_split_sample
from esc_net.demo import cli
from esc_net.export import export_model

onnxruntime = pytest.importorskip("onnxruntime", reason="the deploy extra (pip install 'esc_net[deploy]')")

pytestmark = pytest.mark.slow

CONFIG = os.path.join(REPO_ROOT, "configs", "esc_net_tiny_shapes.yaml")
WEIGHTS = os.path.join(REPO_ROOT, "model_zoo", "esc_net_tiny_shapes.pth")
SPLITS = ("val", "val_unseen", "val_all")


@pytest.fixture(scope="module")
def laboratory(tmp_path_factory):
    """The shipped trained default's config and its export folder."""
    cfg = load_config(CONFIG, ["MODEL.WEIGHTS", WEIGHTS])
    folder = str(tmp_path_factory.mktemp("lab_export"))
    export_model(cfg, folder)
    return cfg, folder


def test_the_exported_default_labels_the_laboratory_images_as_pytorch(laboratory):
    """Held-out images of the three benchmarks, each with its benchmark's vocabulary (unseen classes included), at
    the images' size: the same best class at 99.9% of the pixels or more, scores within 1e-4."""
    from esc_net.predictor import ESCNetPredictor
    from esc_net_runtime import ONNXPredictor

    cfg, folder = laboratory
    pytorch, onnx = ESCNetPredictor(cfg), ONNXPredictor(folder)
    for split in SPLITS:
        vocabulary = benchmark(split).vocabulary
        for index in range(3):
            image = np.ascontiguousarray(render_split_sample(7, split, index, 64, 3, 0)[0][:, :, ::-1])  # BGR
            expected = pytorch(image, vocabulary)["sem_seg"].numpy()
            scores = onnx(image, vocabulary)["sem_seg"]
            assert np.abs(scores - expected).max() <= 1e-4, (split, index)
            labels = onnx(image, vocabulary, output="labels")["sem_seg_labels"]
            same = labels == pytorch(image, vocabulary, output="labels")["sem_seg_labels"].numpy()
            assert same.mean() >= 0.999, (split, index)


def test_the_demo_runs_an_exported_model(laboratory, tmp_path):
    _, folder = laboratory
    image = render_split_sample(7, "val_unseen", 0, 64, 3, 0)[0]
    path = tmp_path / "shapes.png"
    assert cv2.imwrite(str(path), image[:, :, ::-1])
    vocabulary = "; ".join(benchmark("val_unseen").vocabulary)
    args = ["--backend", "onnxruntime", folder, "--input", str(path), "--vocabulary", vocabulary]
    overlays = cli.segment_images([*args, "--output", str(tmp_path / "out"), "--save-labels"])
    assert [os.path.basename(p) for p in overlays] == ["shapes_overlay.png"]
    labels = cv2.imread(str(tmp_path / "out" / "shapes_labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (64, 64) and labels.max() < len(benchmark("val_unseen").vocabulary)
    for extra, message in [
        (["--opts", "MODEL.DEVICE", "cpu"], "runs the exported graphs of .*: --opts do not apply"),
        (["--show-prompts", "stripes"], "--show-prompts draws the PyTorch model's pseudo prompts"),
    ]:
        with pytest.raises(SystemExit, match=message):
            cli.segment_images([*args, "--output", str(tmp_path / "refused"), *extra])
    with pytest.raises(SystemExit, match="--backend takes 'pytorch' or 'onnxruntime DIR', got 'onnxruntime'"):
        cli.segment_images(["--backend", "onnxruntime", "--input", str(path), "--output", str(tmp_path / "x")])


def test_the_page_serves_an_exported_model(laboratory):
    pytest.importorskip("gradio")
    from esc_net.demo import web

    _, folder = laboratory
    app, _ = web.create(web.parse_args(["--backend", "onnxruntime", folder]))
    assert "on ONNX Runtime" in str(app.config)
