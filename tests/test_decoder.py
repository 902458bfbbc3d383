"""The upsampling decoder against the plain computation it speeds up."""

import pytest
import torch

from esc_net.modeling.backbone import BackboneShape
from esc_net.modeling.decoder import CorrelationDecoder

SKIP_WIDTH = 48


def make_decoder(class_chunk=16):
    """A two-stage decoder of a 32-channel correlation embedding, skip features 48 channels wide."""
    shape = BackboneShape(embed_dim=32, width=SKIP_WIDTH, patch_size=8, grid_size=(8, 8), num_skips=2)
    return CorrelationDecoder(
        input_shape=shape, hidden_dim=32, decoder_dims=[32, 16], guidance_dims=[16, 8], class_chunk=class_chunk
    ).eval()


@pytest.mark.parametrize("class_chunk", [0, 1, 3])
def test_fast_path_equals_the_reference(class_chunk):
    """CorrelationDecoder.forward_fast (class chunks, the split first conv, the CPU's channels-last layout) computes
    forward_reference (all classes at once, NCHW, each first conv over the concatenation [x ; skip copied per class])
    to float32 rounding."""
    torch.manual_seed(0)
    decoder = make_decoder(class_chunk)
    corr_embed = torch.randn(2, 5, 32, 8, 8)
    skips = [torch.randn(2, 48, 8, 8), torch.randn(2, 48, 8, 8)]
    with torch.no_grad():
        logits = decoder(corr_embed, skips)
        expected = decoder(corr_embed, skips, reference=True)
    assert logits.shape == (2, 5, 32, 32)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_skip_features_join_the_stages_in_the_order_given():
    """skips[i] joins the i-th upsampling: with CLIP_SKIP_LAYERS [3, 7], block 3 at 48x48 and block 7 at 96x96, as
    CAT-Seg fuses them ([7, 3] gives the reverse order)."""
    decoder = make_decoder()
    seen = {}
    for i, projection in enumerate(decoder.skip_projections):
        projection.register_forward_hook(lambda module, args, out, i=i: seen.__setitem__(i, (args[0], out.shape)))
    skips = [torch.randn(1, 48, 8, 8), torch.randn(1, 48, 8, 8)]
    with torch.no_grad():
        decoder(torch.randn(1, 3, 32, 8, 8), skips)
    assert seen[0][0] is skips[0] and seen[0][1][-2:] == (16, 16)
    assert seen[1][0] is skips[1] and seen[1][1][-2:] == (32, 32)
