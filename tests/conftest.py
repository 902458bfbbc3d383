"""Shared test set-up: offline, few threads, and the tiny model sizes every test builds from."""
import os

# Tests never reach the network: a hub download must fail at once instead of timing out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

# A CLIP of a few million parameters in open_clip's own config format (open_clip.CLIP(**TINY_CLIP_CFG)).
# The text tower keeps open_clip's tokenizer vocabulary so that the real tokenizer is used.
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture
def tiny_clip_cfg():
    import copy

    return copy.deepcopy(TINY_CLIP_CFG)
