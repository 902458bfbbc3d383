"""The ESC-Block: its fast path against the paper's order, and the stack of blocks its builder makes."""

import pytest
import torch
from torch.nn import functional as F

from conftest import tiny_cfg
from esc_net.modeling.backbone import BackboneShape
from esc_net.modeling.esc_block import build_esc_blocks

SHAPE = BackboneShape(embed_dim=32, width=48, patch_size=16, grid_size=(16, 16), num_skips=2)
HIDDEN = 16


def make_blocks(use_sam=True, prompt_types=("points", "mask"), class_pad=0, num_blocks=2, text=("sam", "vlf")):
    """Two ESC-Blocks on a 16x16 grid (windows of 8, so that regular and shifted windows differ), small widths;
    ``text``: the parts that read the class text embeddings (MODEL.ESC_NET.TEXT_GUIDANCE)."""
    torch.manual_seed(0)
    sam = dict(embed_dim=32, depth=2, mlp_dim=64, num_heads=2, prompt_types=list(prompt_types))
    sam.update(image_projection="linear", text_token="sam" in text)
    prompts = dict(num_points=3, threshold_factor=1.0, kmeans_iters=7, mask_mode="posterior")
    return build_esc_blocks(
        input_shape=SHAPE,
        num_blocks=num_blocks,
        hidden_dim=HIDDEN,
        deep_supervision=True,
        class_chunk=16,
        prompts=prompts if use_sam else None,
        sam=sam if use_sam else None,
        sam_checkpoint="",
        sam_projection_weights="",
        vlf=dict(
            num_heads=4,
            window_size=8,
            text_guidance_dim=16,
            swin_depth=2,
            class_pad=class_pad,
            text_guidance="vlf" in text,
        ),
    )


def make_inputs(B, N, seed=1):
    g = torch.Generator().manual_seed(seed)
    h, w = SHAPE.grid_size
    return dict(
        corr_embed=torch.randn(B, N, HIDDEN, h, w, generator=g),
        corr_map=3 * torch.randn(B, N, h, w, generator=g),
        image_feats=torch.randn(B, SHAPE.embed_dim, h, w, generator=g),
        text=F.normalize(torch.randn(B, N, SHAPE.embed_dim, generator=g), dim=-1),
    )


def run(block, inputs, reference):
    """Outputs and the gradients of the inputs and of every parameter for a fixed upstream gradient. The reference
    runs timm's window attention explicitly (its non-fused form): the plainest composition there is."""
    for swin in block.vlf.image_guidance.blocks:
        swin.attn.fused_attn = not reference
    block.zero_grad(set_to_none=True)
    inputs = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    corr_embed, corr_map = block(**inputs, reference=reference)
    g = torch.Generator().manual_seed(7)
    ((corr_embed * torch.randn(corr_embed.shape, generator=g)).sum() + (corr_map * corr_map).sum()).backward()
    grads = {k: v.grad for k, v in inputs.items() if v.grad is not None}
    grads.update({n: p.grad for n, p in block.named_parameters() if p.grad is not None})
    for swin in block.vlf.image_guidance.blocks:
        swin.attn.fused_attn = True
    return corr_embed.detach(), corr_map.detach(), grads


@pytest.mark.parametrize(
    "class_chunk, variant",
    [(0, "sam"), (1, "sam"), (3, "sam"), (3, "boxes"), (3, "padded"), (3, "no-sam"), (3, "no-text")],
)
def test_fast_path_equals_the_reference(class_chunk, variant):
    """ESCBlock.forward_fast (SAM's image side once per image, classes in chunks through prompts, SAM, merge and the
    image guidance, the class attention across the chunks, channels-last storage) computes forward_reference (the
    paper's order on all classes at once: SAM's own TwoWayTransformer, timm's explicit window attention, an explicit
    N x N class attention): the same outputs and the same gradients of the inputs and of every parameter."""
    blocks = make_blocks(
        use_sam=variant != "no-sam",
        prompt_types=("points", "boxes", "mask") if variant == "boxes" else ("points", "mask"),
        class_pad=8 if variant == "padded" else 0,
        text=() if variant == "no-text" else ("sam", "vlf"),
    )
    block = blocks[1]  # the second block of the stack: its windows start shifted where the first's do not
    block.class_chunk = class_chunk
    inputs = make_inputs(2, 4)
    fast_embed, fast_map, fast_grads = run(block, inputs, reference=False)
    ref_embed, ref_map, ref_grads = run(block, inputs, reference=True)
    assert fast_embed.shape == (2, 4, HIDDEN, 16, 16) and fast_map.shape == (2, 4, 16, 16)
    assert fast_embed.permute(0, 1, 3, 4, 2).is_contiguous()  # channels-last, which the next block reads as is
    torch.testing.assert_close(fast_embed, ref_embed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_map, ref_map, atol=1e-5, rtol=1e-5)
    assert fast_grads.keys() == ref_grads.keys() and len(fast_grads) > 20
    for name, grad in ref_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("text", [(), ("sam",), ("vlf",), ("sam", "vlf")])
def test_without_text_guidance_a_class_is_known_by_its_correlation_alone(text):
    """With MODEL.ESC_NET.TEXT_GUIDANCE [] the blocks read no class text embedding: two vocabularies whose names
    differ but whose correlation maps are the same get the same refinement (nothing the blocks learn can be tied to
    a training name). Each part that reads the text makes the refinement depend on it."""
    block = make_blocks(text=text)[0]
    inputs = make_inputs(1, 5)
    other_names = dict(inputs, text=make_inputs(1, 5, seed=2)["text"])
    with torch.no_grad():
        embed, corr_map = block(**inputs)
        other_embed, other_map = block(**other_names)
    names = {n for n, _ in block.named_parameters()}
    assert any(n.startswith("sam.text_proj.") for n in names) == ("sam" in text)
    assert any(n.startswith("vlf.text_guidance.text_proj.") for n in names) == ("vlf" in text)
    if text:
        assert not torch.allclose(embed, other_embed, atol=1e-4)
    else:
        torch.testing.assert_close(embed, other_embed, atol=0, rtol=0)
        torch.testing.assert_close(corr_map, other_map, atol=0, rtol=0)


def test_text_guidance_parts_are_checked():
    """A part of TEXT_GUIDANCE that does not exist is refused, naming the key and the parts there are."""
    shape = BackboneShape(embed_dim=32, width=64, patch_size=8, grid_size=(8, 8), num_skips=2)
    with pytest.raises(
        ValueError, match=r"MODEL\.ESC_NET\.TEXT_GUIDANCE must be a list of distinct entries of \['sam', 'vlf'\]"
    ):
        build_esc_blocks(tiny_cfg("MODEL.ESC_NET.TEXT_GUIDANCE", ["sam", "decoder"]), input_shape=shape)
    blocks = build_esc_blocks(tiny_cfg("MODEL.ESC_NET.TEXT_GUIDANCE", []), input_shape=shape)
    assert not hasattr(blocks[0].sam, "text_proj") and not hasattr(blocks[0].vlf.text_guidance, "text_proj")


def test_the_reference_reads_like_the_paper():
    """forward_reference is prompts -> SAM block -> merge -> VLF on the whole vocabulary: each part is called once,
    in that order, with every class."""
    block = make_blocks()[0]
    calls = []
    for name in ("prompt_generator", "merge_sam", "merge_clip", "vlf", "map_head"):
        getattr(block, name).register_forward_hook(lambda module, args, out, name=name: calls.append(name))
    block.sam.register_forward_hook(lambda module, args, kwargs, out: calls.append(("sam", kwargs)), with_kwargs=True)
    with torch.no_grad():
        block.forward_reference(**make_inputs(1, 7))
    assert calls == ["merge_clip", "prompt_generator", ("sam", {"reference": True}), "merge_sam", "vlf", "map_head"]


def test_builder_makes_the_stack_from_the_config():
    """build_esc_blocks(cfg, input_shape) reads the parts' keys: one prompt generator, SAM block, merge and VLF block
    per ESC-Block, map heads where a map is read, Swin windows alternating through the stack."""
    cfg = tiny_cfg("MODEL.ESC_NET.NUM_BLOCKS", 3, "MODEL.ESC_NET.SWIN_DEPTH", 1, "MODEL.ESC_NET.NUM_POINTS", 4)
    shape = BackboneShape(embed_dim=32, width=64, patch_size=8, grid_size=(8, 8), num_skips=2)
    blocks = build_esc_blocks(cfg, input_shape=shape)
    assert len(blocks) == 3 and all(b.prompt_generator.num_points == 4 for b in blocks)
    assert [b.map_head is not None for b in blocks] == [True, True, False]  # the last map is read by nothing
    assert [b.vlf.image_guidance.blocks[0].shift_size for b in blocks] == [(0, 0), (2, 2), (0, 0)]
    assert blocks[0].sam.transformer.embedding_dim == cfg.MODEL.ESC_NET.SAM_EMBED_DIM
    assert blocks[0].merge_clip.in_channels == 32 and blocks[0].vlf.grid_size == (8, 8)
    no_sam = build_esc_blocks(tiny_cfg("MODEL.ESC_NET.USE_SAM_BLOCK", False), input_shape=shape)
    assert not any(b.use_sam for b in no_sam) and all(b.map_head is None for b in no_sam)
    with pytest.raises(ValueError, match=r"MODEL\.ESC_NET\.NUM_BLOCKS must be at least 1, got 0"):
        build_esc_blocks(tiny_cfg("MODEL.ESC_NET.NUM_BLOCKS", 0), input_shape=shape)


def test_former_flat_arguments_are_refused_with_their_new_place():
    """A LazyConfig written for version 3's flat arguments (model.blocks.num_points) is told where each goes."""
    with pytest.raises(TypeError, match=r"num_points -> prompts\.num_points, sam_depth -> sam\.depth"):
        build_esc_blocks(
            input_shape=SHAPE,
            num_blocks=1,
            hidden_dim=HIDDEN,
            deep_supervision=False,
            class_chunk=0,
            prompts=None,
            sam=None,
            sam_checkpoint="",
            sam_projection_weights="",
            vlf=dict(num_heads=4, window_size=8, text_guidance_dim=16, swin_depth=1, class_pad=0),
            num_points=3,
            sam_depth=2,
        )
