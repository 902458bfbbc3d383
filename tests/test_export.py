"""ESC-Net exported to ONNX (esc_net.export): the graphs compute what the PyTorch model computes, with any class
count, and what cannot be exported is refused with its reason."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from conftest import TINY_CONFIG, tiny_cfg
from esc_net.export import EXPORT_FILES, EXPORT_FORMAT, build_export_model, export_model, main
from esc_net.modeling.clip.text_prompts import build_prompts, synonym_class_matrix

onnxruntime = pytest.importorskip("onnxruntime", reason="the deploy extra (pip install 'esc_net[deploy]')")

# A class cap below the vocabularies tested, so that both forms of score_views (every class refined, and the top
# K) run; synonyms averaged, so that the text graph pools several prompts into one class.
CAP = 3
OPTS = ("MODEL.ESC_NET.MAX_CLASSES_PER_VIEW", str(CAP), "MODEL.ESC_NET.SYNONYM_MODE", "average")
# The bar for an exported graph: scores within 1e-4 and the same best class at 99.9% of the pixels.
SCORE_TOLERANCE = 1e-4
MIN_AGREEMENT = 0.999


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model's checkpoint, its export (the config, the folder) and the model as PyTorch runs it."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("export")
    DetectionCheckpointer(build_model(tiny_cfg(*OPTS)), save_dir=str(folder)).save("model")
    cfg = tiny_cfg(*OPTS, "MODEL.WEIGHTS", str(folder / "model.pth"))
    settings = export_model(cfg, str(folder / "onnx"))
    return cfg, str(folder / "onnx"), settings, build_export_model(cfg)


def _session(folder, key):
    return onnxruntime.InferenceSession(os.path.join(folder, EXPORT_FILES[key]), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("num_views, num_classes", [(1, 2), (3, CAP), (2, 7), (1, 12)])
def test_the_image_graph_scores_as_pytorch_at_any_class_count(exported, num_views, num_classes):
    """The graph was traced at 3 classes and 2 views; fewer and more classes than the cap, and other view counts,
    give PyTorch's scores (the pseudo prompts, SAM blocks and class cap included)."""
    _, folder, _, model = exported
    generator = torch.Generator().manual_seed(num_classes)
    views = torch.randn(num_views, 3, model.image_size, model.image_size, generator=generator)
    text = torch.nn.functional.normalize(torch.randn(num_classes, 32, generator=generator), dim=-1)
    with torch.no_grad():
        expected = model.inference.score_views(model, views, text).numpy()
    got = _session(folder, "image").run(None, {"views": views.numpy(), "class_embeddings": text.numpy()})[0]
    assert got.shape == expected.shape == (num_views, num_classes, 32, 32)
    assert np.abs(got - expected).max() <= SCORE_TOLERANCE
    assert (got.argmax(1) == expected.argmax(1)).mean() >= MIN_AGREEMENT


@pytest.mark.parametrize(
    "names", [["red circle", "blue square, azure box"], ["sky", "sofa, couch, settee", "floor", "cat", "dog"]]
)
def test_the_text_graph_embeds_names_as_pytorch(exported, names):
    """Tokens of every synonym in every template and the synonym matrix give the class embeddings of
    encode_text, at two vocabulary sizes."""
    _, folder, settings, model = exported
    prompts, owners = build_prompts(names, settings["templates"], settings["synonym_mode"])
    tokens = model.clip.tokenizer(prompts).numpy()
    inputs = {"tokens": tokens, "synonym_classes": synonym_class_matrix(owners, len(names)).numpy()}
    got = _session(folder, "text").run(None, inputs)[0]
    with torch.no_grad():
        expected = model.clip.encode_text(names).numpy()
    assert got.shape == (len(names), 32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert np.abs(got - expected).max() <= SCORE_TOLERANCE


def test_the_settings_say_what_a_runtime_needs(exported):
    cfg, folder, settings, model = exported
    with open(os.path.join(folder, EXPORT_FILES["settings"])) as f:
        assert json.load(f) == settings
    assert sorted(os.listdir(folder)) == sorted(EXPORT_FILES.values())
    assert settings["format"] == EXPORT_FORMAT
    assert (settings["image_size"], settings["out_size"], settings["embedding_dim"]) == (64, 32, 32)
    assert settings["pixel_mean"] == list(model.clip.pixel_mean) and settings["synonym_mode"] == "average"
    assert settings["inference"]["max_classes_per_view"] == CAP and settings["inference"]["mode"] == "whole"
    assert settings["templates"] == list(cfg.MODEL.ESC_NET.PROMPT_TEMPLATES)
    check = settings["verification"]
    assert check["max_abs_diff"] <= SCORE_TOLERANCE and check["argmax_agreement"] >= MIN_AGREEMENT
    assert max(check["class_counts"]) > CAP >= min(check["class_counts"])  # both forms of the class cap checked


def test_what_cannot_be_exported_is_refused(tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("")
    with pytest.raises(ValueError, match="is a file; give a folder"):
        export_model(tiny_cfg(), str(a_file))
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"needs onnxscript .*pip install 'esc_net\[deploy\]'"):
        export_model(tiny_cfg(), str(tmp_path / "out"))
    monkeypatch.undo()
    argv = ["--config-file", TINY_CONFIG, "--output", str(a_file)]
    with pytest.raises(SystemExit, match=r"^esc-net-export: error: .* is a file; give a folder"):
        main(argv)
    assert not (tmp_path / "out").exists()


def test_a_backbone_other_than_open_clip_is_refused(monkeypatch):
    """The export knows open_clip's text tower and tokenizer; another VisionLanguageBackbone is named, not traced."""
    import esc_net.export

    class OtherBackbone(torch.nn.Module):
        pass

    class Model(torch.nn.Module):
        clip = OtherBackbone()

    monkeypatch.setattr(esc_net.export, "build_model", lambda cfg: Model())
    with pytest.raises(
        ValueError, match="the export knows open_clip's CLIP .* this config's backbone is OtherBackbone"
    ):
        build_export_model(tiny_cfg())
