"""Shared test set-up: offline, few threads, and the tiny model sizes every test builds from."""

import copy
import os
import socket

# Tests never reach the network: a hub download must fail at once instead of timing out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

torch.set_num_threads(2)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO_ROOT, "configs", "esc_net_tiny.yaml")

with open(TINY_CONFIG) as f:
    # A CLIP of a few million parameters in open_clip's own config format (open_clip.CLIP(**TINY_CLIP_CFG)),
    # the one configs/esc_net_tiny.yaml defines. Its text tower keeps open_clip's tokenizer vocabulary.
    TINY_CLIP_CFG = yaml.safe_load(f)["MODEL"]["ESC_NET"]["CLIP_MODEL_CFG"]

# Options that turn the laboratory's config (configs/esc_net_tiny_shapes.yaml, whose CLIP, SAM and aligned
# projection come from the model zoo) into the same model with random CLIP, SAM and projection weights: for tests of
# the training machinery, which must not depend on the pre-trained weights.
RANDOM_BACKBONES = [
    "MODEL.ESC_NET.CLIP_PRETRAINED",
    "none",
    "MODEL.ESC_NET.SAM_CHECKPOINT",
    "",
    "MODEL.ESC_NET.ALLOW_RANDOM_SAM",
    "True",
    "MODEL.ESC_NET.SAM_PROJECTION_WEIGHTS",
    "",
    "MODEL.ESC_NET.SAM_ALIGN_LOSS_WEIGHT",
    "0.0",
]


@pytest.fixture
def tiny_clip_cfg():
    return copy.deepcopy(TINY_CLIP_CFG)


def default_cfg(*opts):
    """Detectron2's config with ESC-Net's defaults (esc_net/config.py: the paper's ViT-B/16 model), plus ``opts``:
    modules built from it (``Module(default_cfg(), **changes)``) take every setting from the one source of
    defaults."""
    from detectron2.config import get_cfg

    import esc_net

    cfg = get_cfg()
    esc_net.add_esc_net_config(cfg)
    cfg.merge_from_list(list(opts))
    return cfg


def tiny_cfg(*opts):
    """The tiny ESC-Net config with no datasets, plus ``opts`` (key, value, ...)."""
    from detectron2.config import get_cfg

    import esc_net

    cfg = get_cfg()
    esc_net.add_esc_net_config(cfg)
    cfg.merge_from_file(TINY_CONFIG)
    cfg.merge_from_list(["DATASETS.TRAIN", "()", "DATASETS.TEST", "()", *opts])
    return cfg


@pytest.fixture
def marker(tmp_path):
    """A file that code carried by a weights or config file would create; the test fails if it exists."""
    path = tmp_path / "code_ran"
    yield path
    assert not path.exists(), "loading the file ran the code it carried"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for servers and process groups that tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory):
    """A whole SAM in the official checkpoint format, of the tiny config's SAM-block sizes (64 px, decoder width
    32, one two-way layer), with random weights: the alignment and transfer tests' SAM."""
    from esc_net.pretrain.sam import build_sam

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("sam") / "sam.pth")
    torch.save(build_sam(64, embed_dim=32, depth=1, mlp_dim=64, num_heads=2).state_dict(), path)
    return path
