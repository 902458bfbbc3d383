"""Config files are read with YAML's safe loader, _BASE_ files included: a config that asks for a Python object is
refused (naming the file and the tag) by the demo, training and the web demo, and nothing in it runs."""

import os
import runpy

import pytest
import yaml
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser

import esc_net
from conftest import REPO_ROOT, TINY_CONFIG
from esc_net import engine
from esc_net.config import ConfigFileError, merge_config_file
from esc_net.demo import cli as demo
from esc_net.engine import setup

TAG = "tag:yaml.org,2002:python/object/apply:os.system"


def _write(path, text):
    path.write_text(text)
    return str(path)


def _unsafe_config(folder, marker):
    """A tiny config whose SEED is a command: yaml.unsafe_load would run it (creating ``marker``)."""
    return _write(
        folder / "unsafe.yaml", f'_BASE_: "{TINY_CONFIG}"\nSEED: !!python/object/apply:os.system ["touch {marker}"]\n'
    )


def test_the_payload_runs_under_yaml_unsafe_load(tmp_path):
    """What the tests below refuse does run code when read as Detectron2 reads configs by default."""
    marker = tmp_path / "MARKER"
    with open(_unsafe_config(tmp_path, marker)) as f:
        yaml.unsafe_load(f)
    assert marker.exists()


def test_merge_config_file_refuses_a_python_tag_naming_the_file_and_the_tag(tmp_path, marker):
    config = _unsafe_config(tmp_path, marker)
    cfg = get_cfg()
    esc_net.add_esc_net_config(cfg)
    with pytest.raises(ConfigFileError) as error:
        merge_config_file(cfg, config)
    assert f"refusing the config {config}, line 2" in str(error.value) and TAG in str(error.value)


def test_a_python_tag_in_a_base_file_is_refused_naming_the_base(tmp_path, marker):
    base = _unsafe_config(tmp_path, marker)
    child = _write(tmp_path / "child.yaml", '_BASE_: "unsafe.yaml"\nSEED: 3\n')
    cfg = get_cfg()
    esc_net.add_esc_net_config(cfg)
    with pytest.raises(ConfigFileError, match=f"refusing the config {base}, line 2"):
        merge_config_file(cfg, child)


def test_the_demo_refuses_it(tmp_path, marker):
    config = _unsafe_config(tmp_path, marker)
    image = tmp_path / "image.png"
    image.write_bytes(b"")  # never read: the config is refused first
    with pytest.raises(SystemExit) as info:
        demo.segment_images(
            ["--config-file", config, "--input", str(image), "--output", str(tmp_path / "out"), "--vocabulary", "cat"]
        )
    assert info.value.code.startswith(f"esc-net-demo: error: refusing the config {config}") and TAG in info.value.code
    assert not (tmp_path / "out").exists()


def test_training_and_evaluation_refuse_it(tmp_path, marker):
    config = _unsafe_config(tmp_path, marker)
    for extra in ([], ["--eval-only"]):
        argv = ["--config-file", config, *extra, "OUTPUT_DIR", str(tmp_path)]
        with pytest.raises(ConfigFileError, match=f"refusing the config {config}"):
            setup(default_argument_parser().parse_args(argv))
        # the command says so in one line, as the demos do, not with a traceback
        assert _one_line_refusal(engine.main, argv).endswith(
            f": error: refusing the config {config}, line 2: "
            + (
                f"could not determine a constructor for the tag '{TAG}'; a config holds only plain values (numbers, "
                "strings, lists, mappings), and a tag that constructs a Python object could run code"
            )
        )


def _one_line_refusal(main, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    message = info.value.code
    assert isinstance(message, str) and "\n" not in message, message
    return message


def test_the_commands_refuse_a_bad_config_or_override_in_one_line(tmp_path, marker):
    """train_net.py and tools/analyze_model.py, like the demos: an unsafe, unreadable or LazyConfig file, or an
    override that does not fit, is one line naming it."""
    analyze_model = runpy.run_path(os.path.join(REPO_ROOT, "tools", "analyze_model.py"))["main"]
    unsafe = _unsafe_config(tmp_path, marker)
    lazy = os.path.join(REPO_ROOT, "configs", "esc_net_vitb_384.py")
    for main in (engine.main, analyze_model):
        assert f"error: refusing the config {unsafe}, line 2" in _one_line_refusal(main, ["--config-file", unsafe])
        message = _one_line_refusal(main, ["--config-file", lazy])
        assert f"error: {lazy} is a LazyConfig (Python) file, and this command reads YAML configs" in message
        assert "tools/lazyconfig_train_net.py" in message
        message = _one_line_refusal(main, ["--config-file", str(tmp_path / "missing.yaml")])
        assert f"error: bad config {tmp_path / 'missing.yaml'}: Config file" in message and "does not exist" in message
    message = _one_line_refusal(engine.main, ["--config-file", TINY_CONFIG, "MODEL.NO_SUCH_KEY", "1"])
    assert f"bad config overrides ['MODEL.NO_SUCH_KEY', '1'] of the config {TINY_CONFIG}: Non-existent key" in message
    message = _one_line_refusal(analyze_model, ["--config-file", TINY_CONFIG, "--opts", "MODEL.ESC_NET.LOSS", "l2"])
    assert message.startswith("analyze_model.py: error: MODEL.ESC_NET.LOSS")


@pytest.mark.slow
def test_the_web_demo_refuses_it(tmp_path, marker):
    pytest.importorskip("gradio", reason="the web demo needs gradio (pip install -e .[web])")
    from esc_net.demo import web

    config = _unsafe_config(tmp_path, marker)
    with pytest.raises(demo.InputError, match=f"refusing the config {config}"):
        web.create(web.parse_args(["--config-file", config]))


@pytest.mark.parametrize(
    "text, message",
    [
        ("MODEL: [1, 2\n", "is not valid YAML"),
        ("MODEL:\n  NO_SUCH_KEY: 1\n", "Non-existent config key: MODEL.NO_SUCH_KEY"),
        ('_BASE_: "loop.yaml"\n', "loops"),
        ('_BASE_: "missing.yaml"\n', "cannot read the config"),
        ("", "bad config"),
        ("- 1\n", "a config file, and each file of its _BASE_ chain, is a mapping of KEY: value lines"),
        ("just text\n", "is a mapping of KEY: value lines"),
    ],
)
def test_other_bad_files_are_named(tmp_path, text, message):
    config = _write(tmp_path / "loop.yaml", text)
    cfg = get_cfg()
    esc_net.add_esc_net_config(cfg)
    with pytest.raises(ConfigFileError, match=message) as error:
        merge_config_file(cfg, config)
    assert config in str(error.value) and "\n" not in str(error.value)


def test_a_lazy_config_is_named_as_such(marker):
    """A LazyConfig (Python) file given where a YAML config is read: fvcore read it as YAML and failed with
    "'str' object has no attribute 'items'"."""
    for name in ("esc_net_vitb_384.py", "esc_net_tiny_shapes.py"):
        path = os.path.join(REPO_ROOT, "configs", name)
        cfg = get_cfg()
        esc_net.add_esc_net_config(cfg)
        with pytest.raises(ConfigFileError, match="is a LazyConfig \\(Python\\) file, and this command reads YAML"):
            merge_config_file(cfg, path)


def test_the_configs_of_the_repository_and_a_dumped_config_load(tmp_path):
    """Every shipped YAML config is plain YAML, and so is the config.yaml Detectron2 writes into OUTPUT_DIR (the
    configs/*.py LazyConfig files are Python code by design)."""
    folder = os.path.join(os.path.dirname(TINY_CONFIG))
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".yaml")):
        cfg = get_cfg()
        esc_net.add_esc_net_config(cfg)
        merge_config_file(cfg, os.path.join(folder, name))
    dumped = _write(tmp_path / "config.yaml", cfg.dump())
    again = get_cfg()
    esc_net.add_esc_net_config(again)
    merge_config_file(again, dumped)
    # compared as plain data: nested tuples come back as lists of lists, as from any Detectron2 dump
    assert yaml.safe_load(again.dump()) == yaml.safe_load(cfg.dump())
