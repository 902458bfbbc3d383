"""CLIPEncoder (esc_net.modeling.clip): shapes, weight loading, q/v-only fine-tuning, prompts and the text cache.

Every model is the tiny open_clip config of conftest.py (64x64 input, patch 8 -> 8x8 grid, D = 32, C_clip = 64,
4 image blocks, 2 text blocks).
"""

import copy
import json
import time

import open_clip
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from open_clip.model import resize_pos_embed
from torch import nn

from conftest import TINY_CLIP_CFG, default_cfg
from esc_net.modeling.backbone import BackboneShape
from esc_net.modeling.clip import CLIPEncoder, SplitQKVAttention

NAMES = ["cat", "dog", "sofa, couch"]
TEMPLATE = "A photo of a {} in the scene."
ATTENTION_LAYERS = [f"clip.visual.transformer.resblocks.{i}.attn" for i in range(4)] + [
    f"clip.transformer.resblocks.{i}.attn" for i in range(2)
]


def tiny_encoder(seed=0, image_size=64, **kwargs):
    """The tiny CLIP encoder; its dense features are those of CLIP's ordinary last block unless ``dense_layer``
    says otherwise (open_clip's own forward computes that block, which most tests compare with)."""
    torch.manual_seed(seed)
    kwargs.setdefault("skip_layers", (1, 2))
    kwargs.setdefault("pretrained", "none")
    kwargs.setdefault("dense_layer", "attention")
    return CLIPEncoder(
        default_cfg(), model_name="tiny", model_cfg=copy.deepcopy(TINY_CLIP_CFG), image_size=image_size, **kwargs
    )


def images(batch=2, size=64, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An open_clip.CLIP of the tiny config and its state dict saved as .safetensors and as .bin."""
    torch.manual_seed(123)
    model = open_clip.CLIP(**copy.deepcopy(TINY_CLIP_CFG)).eval()
    folder = tmp_path_factory.mktemp("clip_weights")
    state = model.state_dict()
    paths = {"safetensors": folder / "open_clip_model.safetensors", "bin": folder / "open_clip_pytorch_model.bin"}
    safetensors.torch.save_file(state, str(paths["safetensors"]))
    torch.save(state, paths["bin"])
    return model, paths


def reference_image_features(model, x, layers):
    """open_clip's own forward: last-block patch tokens through ln_post and proj [B, D, h, w], and the given
    blocks' patch tokens [B, C, h, w]."""
    outputs = {}
    hooks = [
        model.visual.transformer.resblocks[i].register_forward_hook(
            lambda module, args, out, i=i: outputs.__setitem__(i, out[:, 1:])
        )
        for i in layers
    ]
    model.visual.output_tokens = True
    try:
        _, tokens = model.visual(x)  # [B, h*w, C] after ln_post, class token removed
    finally:
        model.visual.output_tokens = False
        for hook in hooks:
            hook.remove()
    side = int(tokens.shape[1] ** 0.5)

    def to_map(t):
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)

    return to_map(tokens @ model.visual.proj), [to_map(outputs[i]) for i in layers]


def reference_text(model, prompts, context_length=32):
    tokens = open_clip.SimpleTokenizer(context_length=context_length)(prompts)
    return F.normalize(model.encode_text(tokens), dim=-1)


# ----------------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("image_size", [64, 96])
def test_encode_image_shapes(image_size):
    enc = tiny_encoder(image_size=image_size, skip_layers=(0, 2, 3))
    grid = image_size // 8
    assert enc.output_shape() == BackboneShape(
        embed_dim=32, width=64, patch_size=8, grid_size=(grid, grid), num_skips=3
    )
    # what a LazyConfig derives from the arguments alone, without building the model
    assert (
        CLIPEncoder.output_shape_of(
            model_name="tiny", model_cfg=TINY_CLIP_CFG, image_size=image_size, skip_layers=(0, 2, 3)
        )
        == enc.output_shape()
    )
    assert enc.pixel_mean == pytest.approx(tuple(255 * v for v in open_clip.OPENAI_DATASET_MEAN))
    assert enc.pixel_std == pytest.approx(tuple(255 * v for v in open_clip.OPENAI_DATASET_STD))
    with torch.no_grad():
        dense, skips = enc.encode_image(images(size=image_size))
    assert dense.shape == (2, 32, grid, grid)
    assert [tuple(s.shape) for s in skips] == [(2, 64, grid, grid)] * 3
    assert torch.isfinite(dense).all()
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64\]"):
        tiny_encoder().encode_image(images(size=96))


@pytest.mark.parametrize("num_names", [1, 2, 300])
def test_encode_text_shapes_and_unit_norm(num_names):
    enc = tiny_encoder(finetune="frozen", text_batch_size=128)  # 300 names -> 3 chunks
    names = [f"thing number {i}" for i in range(num_names)]
    with torch.no_grad():
        text = enc.encode_text(names)
    assert text.shape == (num_names, 32)
    assert torch.allclose(text.norm(dim=-1), torch.ones(num_names), atol=1e-5)
    with torch.no_grad():  # the same weights in one chunk: the same embeddings
        assert torch.allclose(tiny_encoder(finetune="frozen").encode_text(names), text, atol=1e-6)
    if num_names > 2:  # classes are not collapsed onto one embedding
        assert (text @ text.T).fill_diagonal_(0).max() < 0.9999


def test_empty_or_bad_names_raise():
    enc = tiny_encoder()
    with pytest.raises(ValueError, match="at least one class name"):
        enc.encode_text([])
    with pytest.raises(ValueError, match="empty"):
        enc.encode_text(["cat", " , "])
    with pytest.raises(ValueError, match="exactly one"):
        tiny_encoder(templates=("a photo",))


# ----------------------------------------------------------------------------------------------------- prompts


def test_synonym_modes():
    """ "first": the embedding of the first synonym alone. "average": normalize(mean_s e_s) where e_s is the
    (unit-norm) embedding encode_text([s]) gives for synonym s alone."""
    first = tiny_encoder(finetune="frozen", synonym_mode="first")
    average = tiny_encoder(finetune="frozen", synonym_mode="average")
    with torch.no_grad():
        by_first = first.encode_text(NAMES)
        alone = first.encode_text(["cat", "dog", "sofa", "couch"])
        by_average = average.encode_text(NAMES)
    assert torch.allclose(by_first, alone[:3], atol=1e-6)
    expected_sofa = F.normalize(alone[2] + alone[3], dim=-1)
    assert torch.allclose(by_average[2], expected_sofa, atol=1e-6)
    assert torch.allclose(by_average[:2], alone[:2], atol=1e-6)  # single names are unaffected
    assert not torch.allclose(by_average[2], by_first[2], atol=1e-3)


def test_template_ensemble_matches_open_clip(reference):
    model, paths = reference
    templates = ("a {}.", "a photo of a {}.", "there is a {} in the scene.")
    enc = CLIPEncoder(
        default_cfg(),
        model_name="tiny",
        model_cfg=TINY_CLIP_CFG,
        pretrained=str(paths["bin"]),
        image_size=64,
        skip_layers=(1,),
        templates=templates,
        finetune="frozen",
    )
    with torch.no_grad():
        ours = enc.encode_text(["cat", "dog"])
        per_template = torch.stack([reference_text(model, [t.format(n) for t in templates]) for n in ("cat", "dog")])
    assert torch.allclose(ours, F.normalize(per_template.mean(dim=1), dim=-1), atol=1e-5)


# ------------------------------------------------------------------------------------------------ weight files


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_weight_files_load_and_match_open_clip(reference, fmt):
    model, paths = reference
    enc = CLIPEncoder(
        default_cfg(),
        model_name="tiny",
        model_cfg=TINY_CLIP_CFG,
        pretrained=str(paths[fmt]),
        image_size=64,
        skip_layers=(1, 2),
        finetune="attention",
        templates=(TEMPLATE,),
        dense_layer="attention",  # open_clip's own forward runs the ordinary last block
    )
    ours = enc.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(ours["clip." + key], value), key
    x = images()
    with torch.no_grad():
        dense, skips = enc.encode_image(x)
        ref_dense, ref_skips = reference_image_features(model, x, (1, 2))
        text = enc.encode_text(["cat", "dog"])
        ref_text = reference_text(model, [TEMPLATE.format("cat"), TEMPLATE.format("dog")])
    assert torch.allclose(dense, ref_dense, atol=1e-5)
    for ours_skip, ref_skip in zip(skips, ref_skips):
        assert torch.allclose(ours_skip, ref_skip, atol=1e-5)
    assert torch.allclose(text, ref_text, atol=1e-5)


def test_positional_embedding_resized_for_another_image_size(reference):
    model, paths = reference
    enc = CLIPEncoder(
        default_cfg(),
        model_name="tiny",
        model_cfg=TINY_CLIP_CFG,
        pretrained=str(paths["safetensors"]),
        image_size=96,
        skip_layers=(1,),
        finetune="frozen",
    )
    assert enc.output_shape().grid_size == (12, 12)
    state = {"visual.positional_embedding": model.visual.positional_embedding.detach().clone()}
    resize_pos_embed(state, enc.clip)  # open_clip's interpolation of the 8x8 grid to enc's 12x12
    resized = enc.clip.visual.positional_embedding
    assert resized.shape == (1 + 12 * 12, 64)
    assert torch.equal(resized, state["visual.positional_embedding"])
    assert torch.equal(resized[0], model.visual.positional_embedding[0])  # the class token's entry is kept
    with torch.no_grad():
        dense, _ = enc.encode_image(images(size=96))
    assert dense.shape == (2, 32, 12, 12)


def test_named_open_clip_model_with_weights_file(reference, tmp_path):
    model, paths = reference
    config = tmp_path / "esc-net-test-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(config)  # makes the tiny config a named open_clip model
    named = CLIPEncoder(
        default_cfg(),
        model_name="esc-net-test-tiny-clip",
        pretrained=str(paths["bin"]),
        image_size=64,
        skip_layers=(1,),
        finetune="frozen",
    )
    with torch.no_grad():
        text = named.encode_text(["cat", "dog"])
        ref_text = reference_text(model, [TEMPLATE.format("cat"), TEMPLATE.format("dog")])
    assert torch.allclose(text, ref_text, atol=1e-5)
    assert named.pixel_mean == pytest.approx(tuple(255 * v for v in open_clip.OPENAI_DATASET_MEAN))


def test_weight_file_that_does_not_fit_lists_keys(reference, tmp_path):
    model, _ = reference
    state = dict(model.state_dict())
    del state["visual.proj"]
    state["visual.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "broken.bin"
    torch.save(state, path)
    with pytest.raises(ValueError) as error:
        tiny_encoder(pretrained=str(path))
    message = str(error.value)
    assert str(path) in message and "visual.proj" in message and "visual.extra_head.weight" in message

    state = dict(model.state_dict())
    state["visual.proj"] = torch.zeros(64, 16)
    path = tmp_path / "wrong_shape.safetensors"
    safetensors.torch.save_file(state, str(path))
    with pytest.raises(ValueError, match="size mismatch for visual.proj") as error:
        tiny_encoder(pretrained=str(path))
    assert str(path) in str(error.value)

    with pytest.raises(FileNotFoundError, match="missing.pth"):
        tiny_encoder(pretrained=str(tmp_path / "missing.pth"))


def test_pretrained_tag_offline_fails_fast(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    # Offline, with an empty cache: the tag cannot resolve even where someone has downloaded the weights before.
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="'openai'.*local file path"):
        CLIPEncoder(default_cfg(), model_name="ViT-B-16", pretrained="openai", image_size=64)
    assert time.perf_counter() - start < 10
    with pytest.raises(ValueError, match="tag"):
        tiny_encoder(pretrained="openai")  # a tag needs a named model


# ------------------------------------------------------------------------------------------------- fine-tuning


@pytest.mark.parametrize("mode, kinds", [("attention", ("weight",)), ("attention_with_bias", ("weight", "bias"))])
def test_attention_finetuning_changes_only_q_and_v(mode, kinds):
    """ "attention" trains the q and v weights (CAT-Seg's choice), "attention_with_bias" their biases too."""
    enc = tiny_encoder(finetune=mode)
    trainable = {name for name, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {f"{layer}.{p}_{k}" for layer in ATTENTION_LAYERS for p in "qv" for k in kinds}
    before = {key: value.clone() for key, value in enc.state_dict().items()}
    # Every CLIP parameter goes to the optimizer, with weight decay: frozen tensors must still not move.
    optimizer = torch.optim.AdamW(enc.parameters(), lr=1e-2, weight_decay=0.1)
    x = images()
    for _ in range(3):
        dense, skips = enc.encode_image(x)
        text = enc.encode_text(NAMES)
        assert text.requires_grad
        correlation = torch.einsum("bdhw,nd->bnhw", F.normalize(dense, dim=1), text)
        loss = correlation.square().mean() + sum(s.square().mean() for s in skips)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = enc.state_dict()
    assert list(after) == list(before)
    packed = [key for key in after if ".attn.in_proj_" in key]
    assert len(packed) == 2 * len(ATTENTION_LAYERS)
    for key, value in after.items():
        if key in packed:
            q0, k0, v0 = before[key].chunk(3)
            q1, k1, v1 = value.chunk(3)
            assert torch.equal(k0, k1), key
            trained = key.endswith("weight") or "bias" in kinds
            assert (not torch.equal(q0, q1) and not torch.equal(v0, v1)) == trained, key
        else:
            assert torch.equal(before[key], value), key


def test_finetune_modes_share_the_state_dict_format():
    attention = tiny_encoder(seed=0, finetune="attention")
    full = tiny_encoder(seed=1, finetune="full")
    frozen = tiny_encoder(seed=2, finetune="frozen")
    assert not any(p.requires_grad for p in frozen.parameters())
    # everything trains but the contrastive logit scale, which dense prediction never uses
    assert [n for n, p in full.named_parameters() if not p.requires_grad] == ["clip.logit_scale"]
    reference_model = open_clip.CLIP(**copy.deepcopy(TINY_CLIP_CFG))
    assert sum(p.numel() for p in full.parameters()) == sum(p.numel() for p in reference_model.parameters())
    keys = ["clip." + key for key in reference_model.state_dict()]
    assert list(attention.state_dict()) == list(full.state_dict()) == list(frozen.state_dict()) == keys

    with torch.no_grad():  # give the attention-mode encoder weights no other encoder has
        for module in attention.modules():
            if isinstance(module, SplitQKVAttention):
                module.q_weight.mul_(1.5)
                module.v_bias.add_(0.1)
    x = images()
    full.load_state_dict(attention.state_dict())
    frozen.load_state_dict(attention.state_dict())
    with torch.no_grad():
        expected = attention.encode_image(x)[0], attention.encode_text(NAMES)
        for other in (full, frozen):
            assert torch.equal(other.encode_image(x)[0], expected[0])
            assert torch.equal(other.encode_text(NAMES), expected[1])


def test_split_attention_matches_multihead_attention():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    split = SplitQKVAttention(copy.deepcopy(mha), trainable_k=False)
    assert {n for n, _ in split.named_parameters()} == {
        "q_weight",
        "q_bias",
        "v_weight",
        "v_bias",
        "out_proj.weight",
        "out_proj.bias",
    }
    assert {n for n, _ in split.named_buffers()} == {"k_weight", "k_bias"}
    x = torch.randn(3, 5, 16)
    causal = torch.full((5, 5), float("-inf")).triu(1)
    with torch.no_grad():
        assert torch.allclose(
            split(x, x, x, need_weights=False, attn_mask=causal)[0],
            mha(x, x, x, need_weights=False, attn_mask=causal)[0],
            atol=1e-6,
        )
    for (key, ours), (ref_key, ref) in zip(split.state_dict().items(), mha.state_dict().items()):
        assert key == ref_key and torch.equal(ours, ref)

    other = nn.MultiheadAttention(16, 2, batch_first=True)
    split.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert torch.allclose(split(x, x, x, need_weights=False)[0], other(x, x, x, need_weights=False)[0], atol=1e-6)
    bad = other.state_dict()
    bad["in_proj_weight"] = torch.zeros(3 * 8, 8)
    with pytest.raises(RuntimeError, match="size mismatch for in_proj_weight"):
        split.load_state_dict(bad)
    del bad["in_proj_bias"]
    with pytest.raises(RuntimeError, match="in_proj_bias"):
        split.load_state_dict(bad)


@pytest.mark.parametrize("trainable_k", [False, True])
def test_split_attention_loads_with_assign_onto_meta_module(trainable_k):
    # load_state_dict(assign=True) is how a model built on the meta device gets its weights without a copy.
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(16, 2, batch_first=True)
    with torch.device("meta"):
        split = SplitQKVAttention(nn.MultiheadAttention(16, 2, batch_first=True), trainable_k=trainable_k)
    split.load_state_dict(reference.state_dict(), assign=True)

    assert all(t.device.type == "cpu" for t in [*split.parameters(), *split.buffers()])
    assert isinstance(split.q_weight, nn.Parameter) and split.q_weight.requires_grad
    assert isinstance(split.k_weight, nn.Parameter) == trainable_k
    assert ("k_weight" in dict(split.named_buffers())) == (not trainable_k)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        assert torch.allclose(split(x, x, x)[0], reference(x, x, x)[0], atol=1e-6)
    for (key, ours), (ref_key, ref) in zip(split.state_dict().items(), reference.state_dict().items()):
        assert key == ref_key and torch.equal(ours, ref)

    bad = reference.state_dict()
    bad["in_proj_bias"] = torch.zeros(8)
    with pytest.raises(RuntimeError, match="size mismatch for in_proj_bias"):
        split.load_state_dict(bad, assign=True)


# ------------------------------------------------------------------------------------------------------- cache


def test_text_cache():
    enc = tiny_encoder(finetune="attention")
    calls = []
    enc.clip.transformer.register_forward_hook(lambda *args: calls.append(1))  # the text transformer
    with torch.no_grad():
        first = enc.encode_text(NAMES)
        again = enc.encode_text(NAMES)
        assert len(calls) == 1 and torch.equal(first, again)
        again.add_(1.0)  # the caller owns its copy; the cache is untouched
        assert torch.equal(enc.encode_text(NAMES), first) and len(calls) == 1
        other_vocabulary = enc.encode_text(["cat", "bird"])
        assert len(calls) == 2 and other_vocabulary.shape == (2, 32)
        enc.clip.text_projection.add_(0.2 * torch.randn_like(enc.clip.text_projection))  # in-place weight change
        changed = enc.encode_text(NAMES)
        assert len(calls) == 3 and not torch.allclose(changed, first, atol=1e-4)

    # Grad enabled and the text tower trainable: recomputed on every call, with a graph.
    assert enc.encode_text(NAMES).requires_grad and enc.encode_text(NAMES).requires_grad
    assert len(calls) == 5

    donor = tiny_encoder(seed=7, finetune="frozen")
    enc.load_state_dict(donor.state_dict())
    with torch.no_grad():
        assert torch.equal(enc.encode_text(NAMES), donor.encode_text(NAMES))
    assert len(calls) == 6  # enc recomputed once after load_state_dict

    # Frozen text tower: cached even with grad mode on.
    frozen_calls = []
    donor.clip.transformer.register_forward_hook(lambda *args: frozen_calls.append(1))
    donor.encode_text(NAMES)
    donor.encode_text(NAMES)
    assert frozen_calls == []  # already cached by the no_grad call above


# ----------------------------------------------------------------------------------------------------- arguments


def test_argument_checks():
    with pytest.raises(ValueError, match=r"MODEL\.ESC_NET\.CLIP_FINETUNE must be one of .*, got 'qkv'"):
        tiny_encoder(finetune="qkv")
    with pytest.raises(ValueError, match=r"MODEL\.ESC_NET\.SYNONYM_MODE must be one of \['first', 'average'\]"):
        tiny_encoder(synonym_mode="all")
    with pytest.raises(ValueError, match="skip_layers"):
        tiny_encoder(skip_layers=(4,))
    with pytest.raises(ValueError, match="multiple"):
        tiny_encoder(image_size=60)
    with pytest.raises(ValueError, match="lacks the keys"):
        CLIPEncoder(default_cfg(), model_name="tiny", model_cfg={"embed_dim": 32}, pretrained="none", image_size=64)


def test_value_dense_layer_is_catsegs_dense_last_layer(reference):
    """dense_layer="value": the last block reads each position through v and the output projection only, the class
    token's input is the residual, then the MLP (CAT-Seg's dense layer), computed here by hand from open_clip's own
    model; the skips are unchanged, and the last block's q and k cannot train (they take no part)."""
    model, paths = reference
    enc = tiny_encoder(pretrained=str(paths["bin"]), dense_layer="value", finetune="attention").eval()
    x = images()
    inputs = {}
    hook = model.visual.transformer.resblocks[-1].register_forward_pre_hook(lambda m, args: inputs.update(x=args[0]))
    try:
        with torch.no_grad():
            _, skips = reference_image_features(model, x, [1, 2])
    finally:
        hook.remove()
    block = model.visual.transformer.resblocks[-1]
    tokens = inputs["x"]  # [B, 1 + h*w, C], batch first
    width = tokens.shape[-1]
    with torch.no_grad():
        v_weight, v_bias = block.attn.in_proj_weight[2 * width :], block.attn.in_proj_bias[2 * width :]
        values = block.attn.out_proj(block.ln_1(tokens[:, 1:]) @ v_weight.T + v_bias)
        y = tokens[:, :1] + values
        z = y + block.mlp(block.ln_2(y))
        expected = (model.visual.ln_post(z) @ model.visual.proj).transpose(1, 2).reshape(2, 32, 8, 8)
        dense, ours = enc.encode_image(x)
    torch.testing.assert_close(dense, expected, rtol=1e-4, atol=1e-5)
    for a, b in zip(ours, skips):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # it differs from the ordinary last block, and only the last block's q (and the frozen k) go without training
    ordinary, _ = tiny_encoder(pretrained=str(paths["bin"])).eval().encode_image(x)
    assert not torch.allclose(ordinary, dense, atol=1e-3)
    last = enc.clip.visual.transformer.resblocks[-1].attn
    assert not last.q_weight.requires_grad and last.v_weight.requires_grad
    assert enc.clip.visual.transformer.resblocks[-2].attn.q_weight.requires_grad
    with pytest.raises(ValueError, match=r"MODEL\.ESC_NET\.CLIP_DENSE_LAYER must be one of"):
        tiny_encoder(dense_layer="values")


def test_a_tag_gives_its_activation_and_statistics_without_its_weights():
    """OpenAI's CLIP was trained with QuickGELU: the "openai" tag builds it so (open_clip itself only warns when
    "ViT-B-16" is given that tag), and a model whose weights come from a checkpoint gets the tag's activation and
    image statistics without downloading anything (built on the meta device: structure only)."""
    with torch.device("meta"):
        enc = CLIPEncoder(
            default_cfg(), model_name="ViT-B-16", pretrained="openai", image_size=64, load_pretrained=False
        )
    acts = {type(m).__name__ for m in enc.clip.visual.transformer.resblocks[0].mlp.modules()}
    assert "QuickGELU" in acts
    assert enc.pixel_std == pytest.approx(tuple(255 * v for v in open_clip.OPENAI_DATASET_STD))
    with pytest.raises(ValueError, match="neither a local weights file nor a pretrained tag"):
        CLIPEncoder(default_cfg(), model_name="ViT-B-16", pretrained="opnai", image_size=64, load_pretrained=False)
