"""The README's Python snippets run as written, from a folder laid out as the repository root after
scripts/run_default.sh: configs/, the embedded default's checkpoint (here the embedded default's model with random
weights, saved by Detectron2's checkpointer) and the Synthetic Shapes world."""

import os
import re

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import esc_net
from conftest import RANDOM_BACKBONES, REPO_ROOT
from esc_net.data import synthetic_shapes as ss

with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
    README = f.read()
# (section heading, code) of every ```python block
SNIPPETS = [
    (re.findall(r"^## (.+)$", README[: match.start()], flags=re.M)[-1], match.group(1))
    for match in re.finditer(r"^```python\n(.*?)^```$", README, flags=re.M | re.S)
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    # a checkout's configs and its model zoo (the laboratory's config reads the aligned projection from it)
    os.symlink(os.path.join(REPO_ROOT, "configs"), root / "configs")
    os.symlink(os.path.join(REPO_ROOT, "model_zoo"), root / "model_zoo")
    ss.generate_synthetic_shapes(root=str(root / "datasets"), num_train=1, num_val=1)
    cfg = get_cfg()
    esc_net.add_esc_net_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", "esc_net_tiny_shapes.yaml"))
    cfg.merge_from_list(RANDOM_BACKBONES)
    torch.manual_seed(0)
    model = build_model(cfg)
    (root / "output" / "esc_net_tiny_shapes").mkdir(parents=True)
    DetectionCheckpointer(model, save_dir=str(root / "output" / "esc_net_tiny_shapes")).save("model_final")
    return root, model.state_dict()


def test_the_readme_has_its_python_snippets():
    sections = [section for section, _ in SNIPPETS]
    assert sections.count("Using the model in your own pipeline") == 2 and "Demo and predictor" in sections


@pytest.mark.parametrize("index", range(len(SNIPPETS)), ids=[f"{s}:{i}" for i, (s, _) in enumerate(SNIPPETS)])
def test_readme_snippet_runs(root, index, monkeypatch):
    folder, saved = root
    monkeypatch.chdir(folder)
    section, code = SNIPPETS[index]
    namespace = {}
    exec(compile(code, f"README.md, python snippet {index}", "exec"), namespace)
    if "model" in namespace:  # the own-pipeline snippet: the trained weights, loaded by Detectron2's checkpointer
        state = namespace["model"].state_dict()
        assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    if "scores" in namespace:
        assert namespace["scores"].shape[-2:] == (64, 64)


# The project's own Markdown files, whose relative links (files and folders of the repository) must resolve.
DOCUMENTS = ["README.md", "CONTRIBUTING.md", "CHANGELOG.md", "datasets/README.md"] + [
    os.path.join("docs", name) for name in sorted(os.listdir(os.path.join(REPO_ROOT, "docs"))) if name.endswith(".md")
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_relative_link_resolves(document):
    path = os.path.join(REPO_ROOT, document)
    with open(path, encoding="utf-8") as f:
        targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", f.read())
    local = [t for t in targets if not re.match(r"[a-z]+:", t)]  # not http:, https:, mailto:
    missing = [t for t in local if not os.path.exists(os.path.join(os.path.dirname(path), t))]
    assert not missing, f"{document} links to files that do not exist: {missing}"
