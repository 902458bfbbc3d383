"""The laboratory's pre-training stages: the tiny CLIP and SAM are the libraries' own classes, trained by our loops,
saved in the official formats, and loaded by ESC-Net through CLIP_PRETRAINED and SAM_CHECKPOINT."""

import json
import os
import re

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from segment_anything.modeling import Sam

from conftest import TINY_CLIP_CFG, tiny_cfg
from esc_net.pretrain import cli
from esc_net.pretrain import clip as clip_stage
from esc_net.pretrain.clip import build_clip, pretrain_clip
from esc_net.pretrain.common import sha256
from esc_net.pretrain.sam import build_sam, decode_masks, pretrain_sam

SAM_SIZES = dict(embed_dim=32, depth=1, mlp_dim=64, num_heads=2)  # the tiny config's SAM block


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("clip") / "clip.pt")
    report = pretrain_clip(
        TINY_CLIP_CFG,
        64,
        path,
        steps=2,
        batch_size=8,
        num_images=16,
        eval_images=12,
        eval_period=1,
        report_path=path.replace(".pt", ".json"),
    )
    return path, report


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("sam") / "sam.pth")
    report = pretrain_sam(
        64,
        **SAM_SIZES,
        output=path,
        steps=2,
        batch_size=8,
        num_images=16,
        eval_images=8,
        eval_period=1,
        report_path=path.replace(".pth", ".json"),
    )
    return path, report


def test_clip_stage_writes_an_open_clip_state_dict_that_esc_net_loads(clip_file):
    path, report = clip_file
    state = torch.load(path, weights_only=True)
    reference = build_clip(TINY_CLIP_CFG, 64)[0].state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in reference.items()}
    model = build_model(tiny_cfg("MODEL.ESC_NET.CLIP_PRETRAINED", path))
    loaded = model.clip.clip.state_dict()
    for key in ("visual.conv1.weight", "transformer.resblocks.0.attn.in_proj_weight", "text_projection"):
        torch.testing.assert_close(loaded[key], state[key])
    with open(path.replace(".pt", ".json")) as f:
        written = json.load(f)
    assert written["zero_shot"].keys() >= {"object", "color", "kind", "texture", "seen", "unseen kind"}
    assert written["settings"]["steps"] == 2 and report["zero_shot"]["images"] == 12
    # the learning curve: every eval_period steps before the last (whose figures are "zero_shot")
    assert [point["step"] for point in written["learning_curve"]] == [1]
    assert written["learning_curve"][0].keys() >= {"object", "kind", "unseen kind"}


def test_sam_stage_writes_the_official_format_that_changes_the_sam_blocks(sam_file):
    path, report = sam_file
    state = torch.load(path, weights_only=True)
    # the layout of sam_vit_b_01ec64.pth: a whole segment_anything Sam's state dict
    assert {k.split(".")[0] for k in state} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert isinstance(build_sam(64, **SAM_SIZES), Sam)
    torch.manual_seed(0)
    random = build_model(tiny_cfg())
    torch.manual_seed(0)
    loaded = build_model(tiny_cfg("MODEL.ESC_NET.SAM_CHECKPOINT", path))
    block, block_random = loaded.blocks[0].sam, random.blocks[0].sam
    for key, value in state.items():
        if key.startswith("mask_decoder.transformer."):
            torch.testing.assert_close(block.transformer.state_dict()[key[len("mask_decoder.transformer.") :]], value)
    changed = block.transformer.layers[0].self_attn.q_proj.weight
    assert not torch.equal(changed, block_random.transformer.layers[0].self_attn.q_proj.weight)
    torch.testing.assert_close(
        block.prompt_encoder.point_embeddings[1].weight, state["prompt_encoder.point_embeddings.1.weight"]
    )
    assert 0 <= report["single_point_iou"] <= 100 and report["held_out_objects"] == 8
    assert [point["step"] for point in report["learning_curve"]] == [1]


def test_batched_decoder_equals_segment_anythings_per_image():
    """decode_masks runs MaskDecoder.predict_masks's layers once for a batch; image by image they agree."""
    torch.manual_seed(0)
    sam = build_sam(64, **SAM_SIZES).eval()
    embeddings = torch.randn(3, 32, 8, 8)
    points = (torch.rand(3, 2, 2) * 64, torch.tensor([[1, 1], [1, -1], [1, 0]]))
    sparse, dense = sam.prompt_encoder(points=points, boxes=None, masks=torch.randn(3, 1, 32, 32))
    pe = sam.prompt_encoder.get_dense_pe()
    masks, iou = decode_masks(sam.mask_decoder, embeddings, pe, sparse, dense)
    for b in range(3):
        ref_masks, ref_iou = sam.mask_decoder.predict_masks(
            embeddings[b : b + 1], pe, sparse[b : b + 1], dense[b : b + 1]
        )
        torch.testing.assert_close(masks[b : b + 1], ref_masks, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(iou[b : b + 1], ref_iou, rtol=1e-4, atol=1e-5)


def test_command_skips_a_stage_whose_output_loads(tmp_path, sam_file, monkeypatch, caplog):
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "esc_net_tiny.yaml")
    args = ["sam", "--config-file", config, "--steps", "1", "--batch-size", "4", "--num-images", "8"]
    output = str(tmp_path / "sam.pth")
    assert cli.pretrain(args + ["--output", output]) is not None
    assert os.path.isfile(output) and os.path.isfile(str(tmp_path / "sam.json"))

    def no_training(*a, **k):
        raise AssertionError("a stage whose output loads must not train again")

    parser = cli.build_parser()  # built before the stage is replaced: its defaults come from the real one
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(cli.sam_stage, "pretrain_sam", no_training)
    assert cli.pretrain(args + ["--output", output]) is None
    # a file that does not load (here: a SAM of other sizes) is trained again
    with pytest.raises(AssertionError, match="must not train"):
        cli.pretrain(args + ["--output", sam_file[0], "--opts", "MODEL.ESC_NET.SAM_EMBED_DIM", "64"])


def test_command_refuses_a_config_without_a_clip_model_config(tmp_path):
    config = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "esc_net_vitb_384.yaml"
    )
    with pytest.raises(ValueError, match="CLIP_MODEL_CFG"):
        cli.pretrain(["clip", "--config-file", config, "--output", str(tmp_path / "c.pt")])


def test_tokenizer_has_the_configs_context():
    model, tokenizer = build_clip(TINY_CLIP_CFG, 64)
    assert tokenizer(["a photo of a red star."]).shape == (1, TINY_CLIP_CFG["text_cfg"]["context_length"])
    assert np.isfinite(model.logit_scale.item())


TINY_CONFIG_FILE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "esc_net_tiny.yaml"
)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--steps", "0"], "steps must be at least 1, got 0"),
        (["--steps", "-3"], "steps must be at least 1, got -3"),
        (["--batch-size", "0"], "batch size must be at least 1, got 0"),
        (["--num-images", "0"], "number of images must be at least 1, got 0"),
        (["--batch-size", "32", "--num-images", "16"], r"batch size \(32\) is larger than the number of images"),
        (["--lr", "-1"], "learning rate must be a positive number"),
        (["--eval-period", "-1"], "cannot be negative"),
    ],
)
@pytest.mark.parametrize("stage", ["clip", "sam"])
def test_numbers_that_cannot_train_are_refused_before_any_work(tmp_path, capsys, stage, options, message):
    output = tmp_path / "weights.pt"
    argv = [stage, "--config-file", TINY_CONFIG_FILE, "--output", str(output), "--batch-size", "4"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv + ["--num-images", "16"] + options)
    assert exit_info.value.code != 0
    assert re.search(message, str(exit_info.value.code)) and "Traceback" not in str(exit_info.value.code)
    assert not list(tmp_path.iterdir()), "nothing may be written"


def test_a_diverging_run_saves_nothing(tmp_path, monkeypatch):
    class NaNLoss(torch.nn.Module):
        def forward(self, image_features, *args):
            return image_features.sum() * float("nan")

    monkeypatch.setattr(clip_stage, "ClipLoss", NaNLoss)
    output = tmp_path / "clip.pt"
    with pytest.raises(FloatingPointError, match="diverged: the loss is nan at step 1"):
        pretrain_clip(TINY_CLIP_CFG, 64, str(output), steps=2, batch_size=4, num_images=8, eval_images=4)
    assert not output.exists()


def test_the_report_is_strict_json_with_provenance_and_the_losses(clip_file):
    path, report = clip_file
    with open(path.replace(".pt", ".json")) as f:
        text = f.read()
    written = json.loads(text, parse_constant=lambda constant: pytest.fail(f"invalid JSON constant {constant}"))
    assert written["sha256"] == sha256(path) and written["bytes"] == os.path.getsize(path)
    assert written["steps_done"] == 2 and len(written["first_losses"]) == 2
    assert written["final_loss"] == pytest.approx(np.mean(written["first_losses"]))
    assert written["provenance"].keys() >= {"command", "commit", "threads", "torch"}
    # the folder's manifest holds every weights file's report
    with open(os.path.join(os.path.dirname(path), "manifest.json")) as f:
        assert json.load(f) == {"clip.pt": written}
    # a held-out group without an image is recorded as null, not NaN
    assert all(v is None or np.isfinite(v) for v in written["zero_shot"].values())


def _write_report(weights: str, **fields) -> None:
    with open(weights.replace(".pth", ".json"), "w") as f:
        json.dump(fields, f)


def test_only_a_finished_stage_is_skipped(tmp_path, sam_file, caplog):
    """Weights that load are a finished stage only if their report says they were trained: at least one step, a
    finite loss, the same file."""
    load = cli._load_sam(build_sam(64, **SAM_SIZES))
    weights = str(tmp_path / "sam.pth")
    with open(sam_file[0], "rb") as src, open(weights, "wb") as dst:
        dst.write(src.read())
    assert "report" in cli.unfinished_reason(weights, load)
    _write_report(weights, settings={"steps": 0}, final_loss=float("nan"))  # what --steps 0 used to write
    assert "records 0 training steps" in cli.unfinished_reason(weights, load)
    _write_report(weights, settings={"steps": 5}, final_loss=float("nan"))
    assert "final loss of nan" in cli.unfinished_reason(weights, load)
    _write_report(weights, steps_done=5, final_loss=0.5, sha256="0" * 64)
    assert "sha256 differs" in cli.unfinished_reason(weights, load)
    _write_report(weights, steps_done=5, final_loss=0.5, sha256=sha256(weights))
    assert cli.unfinished_reason(weights, load) is None


def test_a_refused_weights_file_is_named_without_torchs_advice(tmp_path, marker):
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    weights = str(tmp_path / "sam.pth")
    torch.save({"x": Payload()}, weights)
    reason = cli.unfinished_reason(weights, cli._load_sam(build_sam(64, **SAM_SIZES)))
    assert "refusing to load the weights file" in reason and weights in reason
    assert "weights_only=False" not in reason


def test_verify_names_every_pre_trained_file_that_is_not_a_finished_stage(clip_file, sam_file, tmp_path):
    argv = ["verify", "--config-file", TINY_CONFIG_FILE, "--opts", "MODEL.ESC_NET.CLIP_PRETRAINED", clip_file[0]]
    argv += ["MODEL.ESC_NET.SAM_CHECKPOINT", sam_file[0]]
    assert cli.pretrain(argv) is None
    changed = tmp_path / "sam.pth"
    changed.write_bytes(open(sam_file[0], "rb").read())
    report = json.loads(open(sam_file[0].replace(".pth", ".json")).read())
    (tmp_path / "sam.json").write_text(json.dumps({**report, "sha256": "0" * 64}))
    with pytest.raises(SystemExit, match=r"sam.pth is not a finished stage: it is not the file its report"):
        cli.main(argv[:-1] + [str(changed)])
