"""SAM block: shapes, batching over images x classes, official SAM checkpoint loading, gradients."""

import logging

import pytest
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import PromptEncoder
from torch.nn import functional as F

from conftest import default_cfg
from esc_net.modeling.sam_block import SAMBlock
from esc_net.modeling.sam_checkpoint import load_sam_state, sam_checkpoint_state

SMALL = dict(clip_dim=24, text_dim=16, embed_dim=32, depth=1, mlp_dim=64, num_heads=2)
SAM_GRID = (24, 24)


def sam_block(**changes) -> SAMBlock:
    """A SAM block of the default config (SAM ViT-B's decoder sizes, points and mask prompts), with ``changes`` to
    its arguments (the sizes of the CLIP features among them)."""
    return SAMBlock(default_cfg(), **changes)


def _load(block, path):
    """What ESCNet.from_config does with MODEL.ESC_NET.SAM_CHECKPOINT, for one block."""
    load_sam_state(block, sam_checkpoint_state(path), path)


def make_inputs(B, N, clip_dim, text_dim, grid, num_points=5, seed=0):
    """Random CLIP features, text embeddings and pseudo prompts; the last point of every class is padding."""
    g = torch.Generator().manual_seed(seed)
    h, w = grid
    M = B * N
    xy = torch.stack(
        [torch.randint(0, w, (M, num_points), generator=g), torch.randint(0, h, (M, num_points), generator=g)], -1
    ).float()
    labels = torch.ones(M, num_points)
    labels[:, -1] = -1
    return dict(
        image_feats=torch.randn(B, clip_dim, h, w, generator=g),
        text_embeds=torch.randn(B, N, text_dim, generator=g),
        points=xy,
        labels=labels,
        masks=torch.rand(M, 1, h, w, generator=g),
    )


@pytest.fixture(scope="module")
def sam():
    """A randomly initialised official SAM ViT-B."""
    torch.manual_seed(0)
    return sam_model_registry["vit_b"]().eval()


@pytest.fixture(scope="module")
def sam_checkpoint(sam, tmp_path_factory):
    """The SAM above, saved in the format of sam_vit_b_01ec64.pth (plain state dict of the whole model)."""
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b.pth"
    torch.save(sam.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def loaded_block(sam_checkpoint):
    torch.manual_seed(1)
    block = sam_block(clip_dim=32, text_dim=16, grid_size=SAM_GRID).eval()
    _load(block, str(sam_checkpoint))
    return block


@pytest.fixture(scope="module")
def reference_prompt_encoder(sam):
    """segment_anything's PromptEncoder for the 24x24 grid with SAM's weights, built independently of SAMBlock."""
    encoder = PromptEncoder(embed_dim=256, image_embedding_size=SAM_GRID, input_image_size=SAM_GRID, mask_in_chans=16)
    encoder.load_state_dict(sam.prompt_encoder.state_dict())
    return encoder.eval()


@pytest.mark.parametrize("num_classes", [1, 2, 300])
def test_output_shape(num_classes):
    block = sam_block(grid_size=(8, 8), **SMALL)
    out = block(**make_inputs(2, num_classes, SMALL["clip_dim"], SMALL["text_dim"], (8, 8)))
    assert out.shape == (2 * num_classes, SMALL["embed_dim"], 8, 8)
    assert torch.isfinite(out).all()


def test_batched_over_images_and_classes_equals_one_at_a_time():
    """Element b*N+n of the output is class n of image b, and does not depend on the other classes or images."""
    grid = (6, 8)  # not square, to catch a swapped h and w
    block = sam_block(grid_size=grid, **SMALL).eval()
    B, N = 2, 3
    x = make_inputs(B, N, SMALL["clip_dim"], SMALL["text_dim"], grid)
    with torch.no_grad():
        full = block(**x)
        for b, n in [(0, 0), (1, 2), (1, 0)]:
            i = b * N + n
            single = block(
                x["image_feats"][b : b + 1],
                x["text_embeds"][b : b + 1, n : n + 1],
                x["points"][i : i + 1],
                x["labels"][i : i + 1],
                x["masks"][i : i + 1],
            )
            torch.testing.assert_close(single[0], full[i], atol=1e-5, rtol=1e-5)
    # Different prompts give different features: the prompts are actually used.
    assert not torch.allclose(full[0], full[1], atol=1e-3)


def test_image_side_is_computed_once_for_all_chunks_of_classes():
    """The class-independent part given by the caller (once per image) gives each chunk of classes the output of
    the whole call; one computed for other images is refused."""
    torch.manual_seed(0)
    block = sam_block(grid_size=(6, 8), **SMALL).eval()
    x = make_inputs(1, 4, SMALL["clip_dim"], SMALL["text_dim"], (6, 8))
    with torch.no_grad():
        whole = block(**x)
        side = block.image_side(x["image_feats"])
        chunks = [
            block(
                x["image_feats"],
                x["text_embeds"][:, i : i + 2],
                x["points"][i : i + 2],
                x["labels"][i : i + 2],
                x["masks"][i : i + 2],
                image_side=side,
            )
            for i in (0, 2)
        ]
    torch.testing.assert_close(torch.cat(chunks), whole)
    other = block.image_side(torch.randn(2, SMALL["clip_dim"], 6, 8))
    with pytest.raises(ValueError, match="image_side was computed for"):
        block(**x, image_side=other)


def test_bad_shapes_raise():
    block = sam_block(grid_size=(8, 8), **SMALL)
    x = make_inputs(2, 3, SMALL["clip_dim"], SMALL["text_dim"], (8, 8))
    with pytest.raises(ValueError, match=r"on a \(8, 8\) grid, got \(2, 24, 6, 6\)"):
        block(**dict(x, image_feats=torch.randn(2, SMALL["clip_dim"], 6, 6)))
    with pytest.raises(ValueError, match=r"masks must be \[B\*N=6, 1, 8, 8\]"):
        block(**dict(x, masks=x["masks"][:3]))
    with pytest.raises(ValueError, match=r"labels must be"):
        block(**dict(x, labels=x["labels"][:, :2]))


def test_official_checkpoint_loads_prompt_encoder_and_transformer(
    sam, sam_checkpoint, reference_prompt_encoder, caplog
):
    torch.manual_seed(2)
    block = sam_block(clip_dim=32, text_dim=16, grid_size=SAM_GRID).eval()
    x = make_inputs(1, 3, 32, 16, SAM_GRID)
    prompts = dict(points=(x["points"], x["labels"]), boxes=None, masks=block.mask_logits(x["masks"]))
    with torch.no_grad():
        assert not torch.allclose(block.prompt_encoder(**prompts)[0], reference_prompt_encoder(**prompts)[0])
    proj_before = block.image_proj[0].weight.clone()

    with caplog.at_level(logging.INFO, logger="esc_net.modeling.sam_checkpoint"):
        _load(block, str(sam_checkpoint))
    assert str(sam_checkpoint) in caplog.text

    with torch.no_grad():
        sparse, dense = block.prompt_encoder(**prompts)
        ref_sparse, ref_dense = reference_prompt_encoder(**prompts)
        assert sparse.shape == (3, 6, 256) and dense.shape == (3, 256, 24, 24)
        assert torch.equal(sparse, ref_sparse) and torch.equal(dense, ref_dense)
        assert torch.equal(block.prompt_encoder.get_dense_pe(), reference_prompt_encoder.get_dense_pe())

        g = torch.Generator().manual_seed(3)
        image = torch.randn(3, 256, 24, 24, generator=g)
        pe = torch.randn(3, 256, 24, 24, generator=g)
        tokens = torch.randn(3, 7, 256, generator=g)
        for ours, theirs in zip(block.transformer(image, pe, tokens), sam.mask_decoder.transformer(image, pe, tokens)):
            assert torch.equal(ours, theirs)
    # The new projections are not part of SAM and keep their initialisation.
    assert torch.equal(block.image_proj[0].weight, proj_before)


def test_grid_points_are_encoded_where_sam_encodes_the_cell_centre(sam, loaded_block):
    """A grid-cell point gets the token SAM's own 1024x1024 encoder gives the pixel at the centre of that cell, and
    the mask encoder is SAM's."""
    x = make_inputs(1, 4, 32, 16, SAM_GRID)
    pixels = (x["points"] + 0.5) * (1024 / SAM_GRID[0]) - 0.5
    logits = loaded_block.mask_logits(x["masks"])
    with torch.no_grad():
        ours = loaded_block.prompt_encoder(points=(x["points"], x["labels"]), boxes=None, masks=logits)
        theirs = sam.prompt_encoder(points=(pixels, x["labels"]), boxes=None, masks=logits)
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-4, rtol=1e-4)
    assert torch.equal(ours[1], theirs[1])


def sam_block_and_inputs(sam_checkpoint, types):
    torch.manual_seed(1)
    block = sam_block(clip_dim=32, text_dim=16, grid_size=SAM_GRID, prompt_types=types).eval()
    _load(block, str(sam_checkpoint))
    B, N = 2, 3
    x = make_inputs(B, N, 32, 16, SAM_GRID)
    x["boxes"] = torch.tensor([[1.0, 2.0, 9.0, 7.0], [0.0, 0.0, 23.0, 23.0], [5.0, 5.0, 6.0, 8.0]]).repeat(B, 1)
    return block, x


@pytest.mark.parametrize("types", [("points", "mask"), ("points",), ("mask",), ("points", "boxes")])
def test_reference_is_segment_anythings_decoder_transformer_on_clip_features(
    sam, sam_checkpoint, reference_prompt_encoder, types
):
    """The reference path is SAM's own modules (a segment_anything Sam loaded from the same checkpoint): the image
    embedding and PE repeated per class as SAM's mask decoder does, the pseudo mask given as logits of its bilinearly
    upsampled probabilities, SAM's TwoWayTransformer."""
    block, x = sam_block_and_inputs(sam_checkpoint, types)
    B, N = x["text_embeds"].shape[:2]
    with torch.no_grad():
        out = block(**x, reference=True)
        mask_logits = torch.logit(F.interpolate(x["masks"], size=(96, 96), mode="bilinear"), eps=1e-4)
        sparse, dense = reference_prompt_encoder(
            points=(x["points"], x["labels"]) if "points" in types else None,
            boxes=x["boxes"] if "boxes" in types else None,
            masks=mask_logits if "mask" in types else None,
        )
        image = torch.repeat_interleave(block.image_proj(x["image_feats"]), N, dim=0) + dense
        pe = torch.repeat_interleave(reference_prompt_encoder.get_dense_pe(), B * N, dim=0)
        text = block.text_proj(x["text_embeds"]).reshape(B * N, 1, 256)
        _, keys = sam.mask_decoder.transformer(image, pe, torch.cat([text, sparse.expand(B * N, -1, -1)], 1))
    assert out.shape == (6, 256, 24, 24)
    torch.testing.assert_close(out, keys.permute(0, 2, 1).reshape(B * N, 256, 24, 24), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("types", [("points", "mask"), ("points",), ("mask",), ("points", "boxes")])
def test_fast_path_equals_the_reference(sam_checkpoint, types):
    """SAMBlock.forward_fast computes SAMBlock.forward_reference (the image side once per image, the cross
    attentions reassociated): the same outputs, and the same gradients of the block's inputs and of its own
    projections for the same upstream gradient."""
    block, x = sam_block_and_inputs(sam_checkpoint, types)
    upstream = torch.randn(6, 256, 24, 24, generator=torch.Generator().manual_seed(3))
    outputs, grads = [], []
    for reference in (False, True):
        differentiable = ("image_feats", "text_embeds", "masks")
        inputs = {k: v.detach().clone().requires_grad_(True) for k, v in x.items() if k in differentiable}
        x.update(inputs)
        block.zero_grad(set_to_none=True)
        out = block(**x, reference=reference)
        (out * upstream).sum().backward()
        outputs.append(out.detach())
        projections = {n: p for n, p in block.named_parameters() if n.startswith(("image_proj", "text_proj"))}
        grads.append({k: v.grad for k, v in inputs.items()})
        grads[-1].update({f"{n}.grad": p.grad for n, p in projections.items()})
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
    assert set(grads[0]) == set(grads[1]) and len(grads[0]) > 3
    for name, ours in grads[0].items():
        if grads[1][name] is None:  # an input the prompt types do not read (the mask without "mask")
            assert ours is None, name
            continue
        # float32 reassociation errors grow with the gradient's size (sums over 6x256x24x24 outputs, entries of a
        # few hundred), so the absolute tolerance is taken relative to the largest entry
        scale = grads[1][name].abs().max().item()
        torch.testing.assert_close(ours, grads[1][name], atol=1e-5 * scale, rtol=1e-4, msg=name)


def test_checkpoint_that_does_not_fit_lists_the_keys(sam, tmp_path):
    state = {k: v for k, v in sam.state_dict().items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    del state["mask_decoder.transformer.layers.0.norm1.weight"]
    state["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 128)
    state["mask_decoder.transformer.layers.2.norm1.weight"] = torch.zeros(256)
    path = tmp_path / "broken_sam.pth"
    torch.save(state, path)

    block = sam_block(clip_dim=32, text_dim=16, grid_size=SAM_GRID)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    with pytest.raises(ValueError) as err:
        _load(block, str(path))
    message = str(err.value)
    assert str(path) in message
    assert "missing keys (1): mask_decoder.transformer.layers.0.norm1.weight" in message
    assert "unexpected keys (1): mask_decoder.transformer.layers.2.norm1.weight" in message
    assert "prompt_encoder.no_mask_embed.weight: checkpoint (1, 128), block (1, 256)" in message
    # Nothing was loaded half-way.
    assert all(torch.equal(v, before[k]) for k, v in block.state_dict().items())


def test_checkpoint_for_other_sizes_is_refused(sam):
    block = sam_block(grid_size=(8, 8), **SMALL)  # width 32, 1 layer: SAM's 256-wide, 2-layer weights do not fit
    with pytest.raises(ValueError, match=r"unexpected keys .*mask_decoder\.transformer\.layers\.1\.") as err:
        load_sam_state(block, sam.state_dict(), "in-memory SAM")
    assert "shape mismatches" in str(err.value)
    assert "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix: checkpoint (2, 128), block (2, 16)" in str(
        err.value
    )


def test_files_that_are_not_sam_checkpoints(tmp_path):
    block = sam_block(grid_size=(8, 8), **SMALL)
    missing = tmp_path / "nowhere" / "sam_vit_b_01ec64.pth"
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist.*dl\.fbaipublicfiles\.com"):
        _load(block, str(missing))

    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": {"prompt_encoder.no_mask_embed.weight": torch.zeros(1, 256)}}, wrapped)
    with pytest.raises(ValueError, match=r"holds no prompt_encoder\.\* .*first keys: model"):
        _load(block, str(wrapped))

    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ValueError, match=r"tensor\.pth.* holds a Tensor, expected a plain state dict"):
        _load(block, str(tensor))


def test_gradients_reach_every_trainable_part():
    block = sam_block(grid_size=(6, 8), **dict(SMALL, depth=2))
    x = make_inputs(2, 3, SMALL["clip_dim"], SMALL["text_dim"], (6, 8))
    for name in ("image_feats", "text_embeds", "masks"):
        x[name].requires_grad_(True)
    out = block(**x)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(4))).sum().backward()

    trainable = {n: p for n, p in block.named_parameters() if p.requires_grad}
    no_grad = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    assert any(n.startswith("image_proj.") for n in trainable) and any(n.startswith("text_proj.") for n in trainable)
    assert any(n.startswith("prompt_encoder.mask_downscaling.") for n in trainable)
    assert "prompt_encoder.point_embeddings.1.weight" in trainable
    assert any(n.startswith("transformer.layers.1.cross_attn_image_to_token.") for n in trainable)
    # Only parameters that cannot reach the output are frozen (which keeps DistributedDataParallel happy).
    frozen = sorted(n for n, p in block.named_parameters() if not p.requires_grad)
    final_attn = [
        f"transformer.final_attn_token_to_image.{layer}.{t}"
        for layer in ("q_proj", "k_proj", "v_proj", "out_proj")
        for t in ("weight", "bias")
    ]
    assert frozen == sorted(
        [f"prompt_encoder.point_embeddings.{i}.weight" for i in (0, 2, 3)]
        + ["prompt_encoder.no_mask_embed.weight", "transformer.norm_final_attn.weight"]
        + ["transformer.norm_final_attn.bias"]
        + final_attn
        + [f"transformer.layers.{i}.cross_attn_token_to_image.k_proj.bias" for i in range(2)]
    )
    for name in ("image_feats", "text_embeds", "masks"):
        assert x[name].grad.abs().sum() > 0, name


@pytest.mark.parametrize("feature_scale", [0.05, 1.0, 20.0])
def test_inputs_to_sams_transformer_have_sams_scale_at_initialisation(loaded_block, feature_scale):
    """With an official-format SAM checkpoint and freshly initialised projections, the image embedding and the
    text token enter SAM's two-way transformer at the scale of what SAM feeds it: its image encoder ends in a
    LayerNorm2d (RMS 1 against 0.71 for the dense positional encoding) and its point tokens have an RMS of about
    1.2. Whatever the scale of the CLIP features and text embeddings."""

    def rms(t):
        return t.pow(2).mean().sqrt().item()

    x = make_inputs(2, 3, 32, 16, SAM_GRID)
    with torch.no_grad():
        image = loaded_block.image_proj(x["image_feats"] * feature_scale)
        dense_pe = loaded_block.prompt_encoder.get_dense_pe()
        text = loaded_block.text_proj(torch.nn.functional.normalize(x["text_embeds"], dim=-1) * feature_scale)
        sparse, _ = loaded_block.prompt_encoder(points=(x["points"], x["labels"]), boxes=None, masks=None)
        point_tokens = sparse[:, :-1][x["labels"] == 1]  # the real points (the last one of each class pads)
    assert 1.2 <= rms(image) / rms(dense_pe) <= 1.6
    assert 0.6 <= rms(text) / rms(point_tokens) <= 1.2


@pytest.mark.parametrize(
    "types, reads",
    [
        (("points", "mask"), {"points", "masks"}),
        (("points",), {"points"}),
        (("mask",), {"masks"}),
        (("boxes",), {"boxes"}),
    ],
)
def test_prompt_types_decide_what_the_block_reads(types, reads):
    """Each prompt kind changes the output exactly when it is among the block's prompt types."""
    torch.manual_seed(0)
    block = sam_block(grid_size=(6, 8), prompt_types=types, **SMALL).eval()
    x = make_inputs(1, 2, SMALL["clip_dim"], SMALL["text_dim"], (6, 8))
    x["boxes"] = torch.tensor([[0.0, 0.0, 3.0, 2.0], [1.0, 1.0, 7.0, 5.0]])
    with torch.no_grad():
        base = block(**x)
        changed = {
            "points": dict(x, points=x["points"].flip(0)),
            "masks": dict(x, masks=x["masks"].flip(0)),
            "boxes": dict(x, boxes=x["boxes"].flip(0)),
        }
        for name, inputs in changed.items():
            assert (not torch.allclose(block(**inputs), base)) == (name in reads), name
    with pytest.raises(ValueError, match="got no"):
        block(**dict(x, **{name: None for name in reads}))
