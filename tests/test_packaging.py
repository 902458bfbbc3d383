"""Packaging: setup.py's console entry points resolve to callables, the metadata files load, the package imports
without the optional web dependency, and the installed commands run.

The entry points esc-net-train (esc_net.engine) and esc-net-prepare (esc_net.data.prepare.cli) name modules that
other branches add; on a branch without them, their cases here fail until those branches are merged.
"""

import importlib
import os
import re
import runpy
import subprocess
import sys
from typing import Dict

import pytest
import setuptools
import yaml

from conftest import REPO_ROOT, TINY_CONFIG

COMMANDS = {
    "esc-net-train",
    "esc-net-prepare",
    "esc-net-demo",
    "esc-net-web-demo",
    "esc-net-pretrain",
    "esc-net-export",
}


def _setup_kwargs() -> Dict:
    """The keyword arguments setup.py passes to setuptools.setup (setup.py run with setup() replaced)."""
    captured = {}
    original = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        runpy.run_path(os.path.join(REPO_ROOT, "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = original
    return captured


SETUP = _setup_kwargs()
CONSOLE_SCRIPTS = dict(line.replace(" ", "").split("=", 1) for line in SETUP["entry_points"]["console_scripts"])


def test_the_documented_commands_are_declared():
    assert set(CONSOLE_SCRIPTS) == COMMANDS


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_entry_point_resolves_to_a_callable(name):
    module_name, _, attribute = CONSOLE_SCRIPTS[name].partition(":")
    assert attribute, f"{name} names no function: {CONSOLE_SCRIPTS[name]}"
    module = importlib.import_module(module_name)
    target = module
    for part in attribute.split("."):
        target = getattr(target, part)
    assert callable(target), f"{name} -> {CONSOLE_SCRIPTS[name]} is not callable"


def test_metadata_extras_and_license():
    assert SETUP["license"] == "MIT"
    extras = SETUP["extras_require"]
    assert {"prep", "demo", "web", "deploy", "test"} <= set(extras)
    assert extras["demo"] == extras["web"] and any(r.startswith("gradio") for r in extras["web"])
    # ONNX export (onnx, onnxscript) and the runtime without PyTorch (onnxruntime, tokenizers)
    names = {re.split(r"[\s;<>=!~\[]", r, maxsplit=1)[0] for r in extras["deploy"]}
    assert names == {"onnxruntime", "onnx", "onnxscript", "tokenizers"}
    # the test suite exercises dataset preparation, the web page, the export and the runtime
    assert set(extras["prep"]) | set(extras["web"]) | set(extras["deploy"]) <= set(extras["test"])
    # the runtime is a package of its own beside esc_net
    assert {"esc_net", "esc_net_runtime"} <= set(SETUP["packages"])
    # detectron2's own requirements are left to detectron2 (the set-up script installs the ones its wheel declares)
    names = {re.split(r"[\s;<>=!~\[]", r, maxsplit=1)[0].lower() for r in SETUP["install_requires"]}
    assert not names & {"detectron2", "yacs", "iopath", "omegaconf", "hydra-core", "black", "termcolor", "cloudpickle"}
    assert "torch>=2.10" in SETUP["install_requires"]


def test_license_citation_and_build_system_files():
    with open(os.path.join(REPO_ROOT, "LICENSE")) as f:
        text = f.read()
    assert text.startswith("MIT License") and "ESC-Net Detectron2 plugin contributors" in text
    with open(os.path.join(REPO_ROOT, "CITATION.cff")) as f:
        citation = yaml.safe_load(f)
    assert citation["cff-version"] == "1.2.0"
    paper = citation["preferred-citation"]
    assert paper["type"] == "conference-paper" and paper["year"] == 2025
    assert paper["title"] == "Effective SAM Combination for Open-Vocabulary Semantic Segmentation"
    assert [a["family-names"] for a in paper["authors"]] == ["Lee", "Cho", "Lee", "Yang", "Choi", "Kim", "Lee"]
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        pyproject = tomllib.load(f)
    # setup.py holds the metadata; pyproject.toml the build system and the tools' settings (ruff, pytest)
    assert set(pyproject) == {"build-system", "tool"} and set(pyproject["tool"]) == {"ruff", "pytest"}


@pytest.mark.slow
def test_package_imports_without_gradio_and_the_web_demo_says_what_is_missing():
    # gradio blocked: "import gradio" raises ImportError, as where the web extra is not installed.
    code = (
        "import sys; sys.modules['gradio'] = None\n"
        "import esc_net, esc_net.demo, esc_net.demo.cli, esc_net.demo.web\n"
        "from esc_net.demo import web\n"
        "try:\n"
        f"    web.main(['--config-file', {TINY_CONFIG!r}])\n"
        "except SystemExit as e:\n"
        "    print(e.code)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "esc-net-web-demo: error: the web demo needs gradio" in result.stdout
    assert "pip install 'esc_net[web]'" in result.stdout


def _installed_command(name: str) -> str:
    """The console script ``name`` of this interpreter's environment, or a skip where the package is not installed
    there with its entry points (e.g. an environment set up before they were added)."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.isfile(path):
        pytest.skip(f"{name} is not installed in {os.path.dirname(sys.executable)} (pip install -e . installs it)")
    return path


@pytest.mark.slow
def test_installed_demo_commands_run(tmp_path):
    missing = tmp_path / "missing.png"
    result = subprocess.run(
        [
            _installed_command("esc-net-demo"),
            "--config-file",
            TINY_CONFIG,
            "--input",
            str(missing),
            "--output",
            str(tmp_path),
            "--vocabulary",
            "cat",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 1
    assert f"esc-net-demo: error: input image not found: {missing}" in result.stderr
    assert "Traceback" not in result.stderr
    result = subprocess.run(
        [_installed_command("esc-net-web-demo"), "--help"], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )
    assert result.returncode == 0 and result.stdout.startswith("usage: esc-net-web-demo")


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train_net.py", "demo/demo.py", "tools/analyze_model.py"])
def test_commands_print_no_deprecation_noise(script):
    """Python's default warning filters, as a user runs a command: no FutureWarning from the libraries' imports
    (torch.jit.script in fvcore and detectron2.modeling) or anything else on stderr."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    result = subprocess.run(
        [sys.executable, script, "--help"], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=env
    )
    assert result.returncode == 0 and result.stdout.startswith("usage:")
    assert result.stderr == ""
