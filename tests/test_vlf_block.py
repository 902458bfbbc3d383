"""Vision-Language Fusion block: shapes, class-order equivariance, batch independence, locality, gradients, the class
attention in chunks (the block's fast path: tests/test_esc_block.py)."""

import pytest
import torch
from torch.nn import functional as F

from conftest import default_cfg
from esc_net.modeling.backbone import BackboneShape
from esc_net.modeling.vlf_block import ClassLinearAttention, ConcatLinear, VisionLanguageFusion

HIDDEN, GUIDANCE, TEXT = 16, 16, 32


def shape(grid):
    """A backbone whose text embeddings are TEXT wide, on a ``grid``."""
    return BackboneShape(embed_dim=TEXT, width=TEXT, patch_size=8, grid_size=grid, num_skips=2)


def make_vlf(grid=(8, 8), window=12, class_pad=0):
    """A VLF block with a regular and a shifted Swin block (SWIN_DEPTH 2)."""
    torch.manual_seed(0)
    return VisionLanguageFusion(
        input_shape=shape(grid),
        hidden_dim=HIDDEN,
        guidance_dim=GUIDANCE,
        num_heads=4,
        window_size=window,
        text_guidance_dim=16,
        swin_depth=2,
        block_index=0,
        class_pad=class_pad,
    ).eval()


def make_inputs(B, N, grid=(8, 8), seed=1):
    g = torch.Generator().manual_seed(seed)
    corr = torch.randn(B, N, HIDDEN, *grid, generator=g)
    guidance = torch.randn(B, N, GUIDANCE, *grid, generator=g)
    text = F.normalize(torch.randn(B, N, TEXT, generator=g), dim=-1)
    return corr, guidance, text


@pytest.fixture(scope="module")
def vlf24():
    return make_vlf(grid=(24, 24), window=12)


@pytest.mark.parametrize("num_classes", [1, 2, 300])
def test_output_shape_for_any_number_of_classes(num_classes):
    vlf = make_vlf()
    inputs = make_inputs(2, num_classes)
    with torch.no_grad():
        out = vlf(*inputs)
    assert out.shape == (2, num_classes, HIDDEN, 8, 8)
    assert torch.isfinite(out).all()


def test_window_configuration(vlf24):
    regular, shifted = vlf24.image_guidance.blocks
    assert regular.window_size == (12, 12) and regular.shift_size == (0, 0)
    assert shifted.window_size == (12, 12) and shifted.shift_size == (6, 6)
    # A window larger than the grid is shrunk to the grid by timm, and the shift then dropped.
    small_regular, small_shifted = make_vlf(grid=(8, 8), window=12).image_guidance.blocks
    assert small_regular.window_size == small_shifted.window_size == (8, 8)
    assert small_shifted.shift_size == (0, 0)
    with torch.no_grad():
        assert vlf24(*make_inputs(2, 2, grid=(24, 24))).shape == (2, 2, HIDDEN, 24, 24)


def test_class_order_equivariance(vlf24):
    corr, guidance, text = make_inputs(2, 5, grid=(24, 24))
    perm = torch.tensor([3, 0, 4, 2, 1])
    with torch.no_grad():
        out = vlf24(corr, guidance, text)
        out_perm = vlf24(corr[:, perm], guidance[:, perm], text[:, perm])
    torch.testing.assert_close(out_perm, out[:, perm], atol=1e-5, rtol=0)


def test_images_are_independent():
    vlf = make_vlf()
    corr, guidance, text = make_inputs(2, 3)
    other_corr, other_guidance, other_text = make_inputs(2, 3, seed=7)
    corr2, guidance2, text2 = corr.clone(), guidance.clone(), text.clone()
    corr2[1], guidance2[1], text2[1] = other_corr[1], other_guidance[1], other_text[1]
    with torch.no_grad():
        out = vlf(corr, guidance, text)
        out2 = vlf(corr2, guidance2, text2)
    torch.testing.assert_close(out2[0], out[0], atol=1e-6, rtol=0)
    assert not torch.allclose(out2[1], out[1], atol=1e-3)


def test_text_guidance_mixes_classes():
    vlf = make_vlf()
    corr, guidance, text = make_inputs(2, 3)
    with torch.no_grad():
        out = vlf(corr, guidance, text)
        # Changing only class 2's text changes class 2 and, through the attention across classes, class 0.
        text2 = text.clone()
        text2[:, 2] = F.normalize(torch.randn(2, TEXT), dim=-1)
        out_text = vlf(corr, guidance, text2)
        # Changing only class 2's correlation embedding changes the other classes too.
        corr2 = corr.clone()
        corr2[:, 2] += 1.0
        out_corr = vlf(corr2, guidance, text)
    for changed in (out_text, out_corr):
        assert (changed[:, 0] - out[:, 0]).abs().max() > 1e-4
        assert (changed[:, 2] - out[:, 2]).abs().max() > 1e-4


def test_spatial_mixing_is_windowed(vlf24):
    corr, guidance, text = make_inputs(1, 2, grid=(24, 24))
    corr2 = corr.clone()
    corr2[0, 0, :, 0, 0] += 3.0
    with torch.no_grad():
        diff = (vlf24(corr2, guidance, text) - vlf24(corr, guidance, text)).abs().amax(dim=(0, 1, 2))  # [h, w]
    # Same regular window as (0, 0), and reached through the shifted window.
    assert diff[5, 7] > 1e-4
    assert diff[11, 11] > 1e-4
    assert diff[15, 15] > 1e-4
    # Rows/columns 18..23 share neither the regular window of (0, 0) nor, after the cyclic shift and its mask, a
    # shifted window with any pixel the regular window reached: window attention, not global attention.
    assert diff[18:, :].max() < 1e-6 and diff[:, 18:].max() < 1e-6


def test_small_grid_attends_globally():
    vlf = make_vlf(grid=(8, 8), window=12)
    corr, guidance, text = make_inputs(1, 1)
    corr2 = corr.clone()
    corr2[0, 0, :, 0, 0] += 3.0
    with torch.no_grad():
        diff = (vlf(corr2, guidance, text) - vlf(corr, guidance, text)).abs()
    assert diff[0, 0, :, 7, 7].max() > 1e-4


@pytest.mark.parametrize("per_class_first", [False, True])
def test_concat_linear_is_a_linear_layer_over_the_broadcast_concatenation(per_class_first):
    """Whichever input comes first, the result is nn.Linear over [x_1; x_2] with x_2 (one vector per class)
    repeated over the positions, bias included once."""
    torch.manual_seed(0)
    maps, tokens = torch.randn(2, 3, 5, 6), torch.randn(2, 3, 1, 4)  # [B, N, P, 6] and [B, N, 1, 4]
    dims = (4, 6) if per_class_first else (6, 4)
    layer = ConcatLinear(dims, 7)
    torch.nn.init.normal_(layer.bias)
    inputs = (tokens, maps) if per_class_first else (maps, tokens)
    plain = torch.nn.Linear(10, 7)
    with torch.no_grad():
        plain.weight.copy_(torch.cat([proj.weight for proj in layer.projs], dim=1))
        plain.bias.copy_(layer.bias)
        expected = plain(torch.cat([t.expand(2, 3, 5, -1) for t in inputs], dim=-1))
        torch.testing.assert_close(layer(*inputs), expected)


def test_linear_attention_matches_explicit_formula():
    torch.manual_seed(0)
    attn = ClassLinearAttention(dim=8, text_guidance_dim=4, num_heads=2)
    B, N, P = 2, 5, 3
    x = torch.randn(B, N, P, 8)
    text = torch.randn(B, N, 1, 4)
    out = attn(x, text)
    # Reference: an explicit N x N matrix of non-negative scores phi(q_n) . phi(k_m), rows normalised.
    qk = attn.qk(x, text)
    q, k = (F.elu(t) + 1 for t in qk.unflatten(-1, (2, 2, 4)).unbind(-3))  # [B, N, P, H, d]
    v = attn.v(x).unflatten(-1, (2, 4))
    scores = torch.einsum("bnphd,bmphd->bphnm", q, k)
    weights = scores / scores.sum(-1, keepdim=True)
    ref = attn.proj(torch.einsum("bphnm,bmphd->bnphd", weights, v).flatten(-2))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter():
    vlf = make_vlf(grid=(24, 24), window=12).train()
    corr, guidance, text = make_inputs(2, 3, grid=(24, 24))
    corr.requires_grad_(True)
    out = vlf(corr, guidance, text)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in vlf.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    assert corr.grad.abs().sum() > 0


def test_bad_inputs_raise_clear_errors():
    vlf = make_vlf()
    corr, guidance, text = make_inputs(1, 2)
    with pytest.raises(ValueError, match="image_guidance must have shape"):
        vlf(corr, guidance[:, :, :8], text)
    with pytest.raises(ValueError, match="text_embeds must have shape"):
        vlf(corr, guidance, text[:, :1])
    with pytest.raises(ValueError, match=r"grid_size=\(8, 8\)"):
        vlf(*make_inputs(1, 2, grid=(6, 6)))
    with pytest.raises(ValueError, match=r"corr_embed must be \[B, N, C, h, w\]"):
        vlf(corr[0], guidance, text)
    with pytest.raises(ValueError, match=r"HIDDEN_DIM \(18\) must be divisible by MODEL\.ESC_NET\.NUM_HEADS \(4\)"):
        VisionLanguageFusion(default_cfg(), input_shape=shape((8, 8)), hidden_dim=18, guidance_dim=18, block_index=0)


def test_swin_shifts_alternate_through_the_blocks():
    """With one Swin block per VLF block, the second ESC-Block's is shifted (regular, shifted, regular, ...)."""
    vlf = VisionLanguageFusion(
        default_cfg(), input_shape=shape((24, 24)), hidden_dim=16, guidance_dim=16, block_index=1
    )
    (block,) = vlf.image_guidance.blocks
    assert block.shift_size == (6, 6) and block.attn.fused_attn


def test_class_chunks_on_cpu_and_gpu():
    from esc_net.modeling.class_chunks import class_chunks

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert class_chunks(5, 2, cpu) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert class_chunks(5, 0, cpu) == [slice(0, 5)]
    # on a GPU chunks would only add kernel launches: all classes at once
    assert class_chunks(5, 2, gpu) == [slice(0, 5)]


def test_padded_class_attention_matches_explicit_padding_tokens():
    """CLASS_ATTENTION_PAD: a vocabulary smaller than the pad length attends as if the learnt padding token were
    appended pad_to - N times (CAT-Seg's padding), in chunks of classes too; a vocabulary that is not smaller is
    unchanged."""
    vlf = make_vlf(class_pad=6)
    tg = vlf.text_guidance
    with torch.no_grad():
        tg.pad_token.normal_(generator=torch.Generator().manual_seed(3))
        tg.pad_text.normal_(generator=torch.Generator().manual_seed(4))
    plain = make_vlf()
    plain.load_state_dict({k: v for k, v in vlf.state_dict().items() if "pad_" not in k})
    small, large = make_inputs(2, 3), make_inputs(1, 7)
    x, text = torch.randn(2, 3, 64, HIDDEN), small[2]
    with torch.no_grad():
        explicit = tg.forward_reference(x, text)  # the padding tokens appended to an explicit class attention
        for sizes in ((3,), (2, 1)):
            chunked = torch.cat(tg(list(x.split(sizes, dim=1)), tg.guides(text)), dim=1)
            torch.testing.assert_close(chunked, explicit, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(vlf(*small), plain(*small), atol=1e-3)  # the padding changes the attention
        torch.testing.assert_close(vlf(*large), plain(*large), atol=1e-6, rtol=1e-6)
