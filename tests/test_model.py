"""The ESCNet meta-architecture on the tiny config: shapes, vocabularies, gradients, class cap, optimizer."""

import logging

import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from conftest import tiny_cfg
from esc_net.data import resolve_vocabularies
from esc_net.solver import build_optimizer


def _image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def _model(*opts):
    """A tiny ESC-Net in eval mode, the same weights for the same ``opts`` (each test builds its own, so no test
    sees another's settings)."""
    torch.manual_seed(0)
    return build_model(tiny_cfg(*opts)).eval()


def _things(n):
    return [f"thing {i}" for i in range(n)]


@pytest.mark.parametrize("num_classes", [1, 2, 300])
@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_inference_shapes(num_classes, mode):
    model = _model("MODEL.ESC_NET.INFERENCE_MODE", mode, "MODEL.ESC_NET.MAX_CLASSES_PER_VIEW", 0)
    vocabulary = _things(num_classes)
    inputs = [
        {"image": _image(50, 70), "height": 50, "width": 70, "vocabulary": vocabulary},
        {"image": _image(64, 64, 1), "height": 32, "width": 40, "vocabulary": vocabulary},
    ]
    outputs = model(inputs)
    assert [o["sem_seg"].shape for o in outputs] == [(num_classes, 50, 70), (num_classes, 32, 40)]
    for o in outputs:
        assert torch.isfinite(o["sem_seg"]).all()
        assert o["sem_seg"].min() >= 0 and o["sem_seg"].max() <= 1


def test_the_vocabulary_rides_with_the_inputs():
    """The model scores the names each input carries; without a default of its own it refuses an input without."""
    model = _model()
    assert model.vocabulary is None and model.train_vocabulary is None  # no key, no DATASETS.TEST / TRAIN
    with pytest.raises(
        ValueError, match=r"carries no 'vocabulary'.*VOCABULARY \(or DATASETS\.TEST\).*resolve_vocabularies"
    ):
        model([{"image": _image(32, 32)}])
    with pytest.raises(ValueError, match="empty"):
        model([{"image": _image(32, 32), "vocabulary": []}])
    with pytest.raises(TypeError):
        model([{"image": _image(32, 32), "vocabulary": "cat, dog"}])
    out = model([{"image": _image(32, 32), "vocabulary": ["cat", "dog", "sofa, couch"]}])
    assert out[0]["sem_seg"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="different vocabularies"):
        model([{"image": _image(32, 32), "vocabulary": ["cat"]}, {"image": _image(32, 32), "vocabulary": ["dog"]}])


def _register(name, classes):
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    MetadataCatalog.get(name).set(stuff_classes=list(classes))
    return name


def test_default_vocabulary_is_resolved_where_the_config_is_read():
    """MODEL.ESC_NET.VOCABULARY (names, or a registered dataset), else DATASETS.TEST[0]'s; TRAIN_VOCABULARY, else
    DATASETS.TRAIN's in training. esc_net.data.resolve_vocabularies reads the datasets' names into the config and the
    model takes names: it reads no catalog, and a dataset's name it was not given the names of is refused. An input's
    own vocabulary overrides the default."""
    test = _register("model_test_default_vocabulary", ["sky", "grass"])
    train = _register("model_test_train_vocabulary", ["cat", "dog", "sofa, couch"])

    def model(*opts):
        torch.manual_seed(0)
        return build_model(resolve_vocabularies(tiny_cfg(*opts))).eval()

    assert model("DATASETS.TEST", (test,)).vocabulary == ["sky", "grass"]
    assert model("MODEL.ESC_NET.VOCABULARY", test).vocabulary == ["sky", "grass"]
    listed = model(
        "MODEL.ESC_NET.VOCABULARY", '["road", "car, automobile"]', "DATASETS.TEST", (test,), "DATASETS.TRAIN", (train,)
    )
    assert listed.vocabulary == ["road", "car, automobile"]  # the key wins over DATASETS.TEST
    assert listed.train_vocabulary == ["cat", "dog", "sofa, couch"]
    assert model("MODEL.ESC_NET.TRAIN_VOCABULARY", test, "DATASETS.TRAIN", (train,)).train_vocabulary == [
        "sky",
        "grass",
    ]
    unresolved = tiny_cfg("DATASETS.TEST", (test,))
    assert resolve_vocabularies(unresolved) is not unresolved and unresolved.MODEL.ESC_NET.VOCABULARY is None

    resolved = model("DATASETS.TEST", (test,))
    MetadataCatalog.remove(test)  # read where the config is read: forward does not look the dataset up
    image = _image(40, 48, 2)
    default = resolved([{"image": image, "height": 20, "width": 24}])[0]["sem_seg"]
    explicit = resolved([{"image": image, "height": 20, "width": 24, "vocabulary": ["sky", "grass"]}])[0]["sem_seg"]
    assert default.shape == (2, 20, 24)
    torch.testing.assert_close(default, explicit)
    assert resolved([{"image": image, "vocabulary": ["a", "b", "c"]}])[0]["sem_seg"].shape[0] == 3  # overrides

    with pytest.raises(KeyError, match="MODEL.ESC_NET.VOCABULARY: dataset 'no_such_dataset'"):
        model("MODEL.ESC_NET.VOCABULARY", "no_such_dataset")
    with pytest.raises(KeyError, match="DATASETS.TRAIN: dataset 'no_such_train_set'"):
        model("DATASETS.TRAIN", ("no_such_train_set",))
    with pytest.raises(ValueError, match="repeats class names"):
        model("MODEL.ESC_NET.VOCABULARY", '["cat", "Cat"]')
    with pytest.raises(
        ValueError, match=r"MODEL\.ESC_NET\.VOCABULARY is 'sky_dataset', a dataset's name.*resolve_vocab"
    ):
        build_model(tiny_cfg("MODEL.ESC_NET.VOCABULARY", "sky_dataset"))


def test_vocabulary_order_permutes_scores():
    """Nothing in ESC-Net depends on the order of the classes (no positional embedding across classes)."""
    model = _model()
    names = ["red circle", "blue square", "grass", "sky", "road"]
    a = model([{"image": _image(64, 64, 3), "vocabulary": names}])[0]["sem_seg"]
    perm = [3, 0, 4, 1, 2]
    b = model([{"image": _image(64, 64, 3), "vocabulary": [names[i] for i in perm]}])[0]["sem_seg"]
    torch.testing.assert_close(b, a[perm], atol=1e-4, rtol=1e-4)


def test_class_cap_refines_top_classes_only():
    """With MAX_CLASSES_PER_VIEW, classes outside each view's top-K never outrank a refined class."""
    model = _model("MODEL.ESC_NET.MAX_CLASSES_PER_VIEW", 5)
    names = [f"category number {i}" for i in range(40)]
    view = torch.randn(2, 3, 64, 64)
    text = model.clip.encode_text(names)
    with torch.no_grad():
        scores = model.inference.score_views(model, view, text)
        dense, _ = model.clip.encode_image(view)
        corr = model.correlation(dense, text)
    assert scores.shape == (2, 40, 32, 32)
    top = corr.flatten(2).amax(2).topk(5, dim=1).indices
    for v in range(2):
        refined = scores[v, top[v]]
        rest = torch.ones(40, dtype=torch.bool)
        rest[top[v]] = False
        assert (scores[v, rest] <= refined.amin(0, keepdim=True) + 1e-6).all()
    out = model([{"image": _image(48, 48), "vocabulary": names}])[0]["sem_seg"]
    assert out.shape == (40, 48, 48)


def test_views_in_passes_give_the_same_scores():
    """VIEW_CLASSES_PER_PASS splits the views of a batch into passes; it bounds memory, never changes a score."""
    vocabulary = _things(30)
    inputs = [
        {"image": _image(50, 70), "vocabulary": vocabulary},
        {"image": _image(64, 64, 1), "vocabulary": vocabulary},
    ]
    outputs = {}
    for per_pass in (0, 30, 100):  # all views at once; one view per pass; three views per pass
        model = _model("MODEL.ESC_NET.INFERENCE_MODE", "sliding", "MODEL.ESC_NET.VIEW_CLASSES_PER_PASS", per_pass)
        outputs[per_pass] = [o["sem_seg"] for o in model(inputs)]
    for per_pass in (30, 100):
        for a, b in zip(outputs[0], outputs[per_pass]):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


TRAIN_VOCABULARY = ["cat", "dog", "grass", "sky"]


def _train_batch(num_classes=4, vocabulary=TRAIN_VOCABULARY):
    inputs = []
    for i in range(2):
        sem_seg = torch.randint(0, num_classes, (64, 64))
        sem_seg[:4] = 255
        inputs.append({"image": _image(64, 64, i), "sem_seg": sem_seg, "vocabulary": vocabulary})
    return inputs


@pytest.mark.parametrize(
    "opts",
    [
        (),
        ("MODEL.ESC_NET.BLOCK_LOSS_WEIGHT", 0.4),
        ("MODEL.ESC_NET.NUM_BLOCKS", 3),
        ("MODEL.ESC_NET.PROMPT_TYPES", ["points", "boxes", "mask"]),
        ("MODEL.ESC_NET.PROMPT_TYPES", ["points"], "MODEL.ESC_NET.BLOCK_LOSS_WEIGHT", 0.4),
        ("MODEL.ESC_NET.PROMPT_TYPES", ["mask"]),
        ("MODEL.ESC_NET.USE_SAM_BLOCK", False, "MODEL.ESC_NET.BLOCK_LOSS_WEIGHT", 0.0),
    ],
    ids=["default", "deep-supervision", "3-blocks", "all-prompts", "points-only", "mask-only", "no-sam"],
)
def test_every_trainable_parameter_gets_a_gradient(opts):
    """One training step: every parameter with requires_grad has a non-zero gradient, in every supported config
    (DistributedDataParallel fails on unused parameters, and a parameter without gradient never learns). Without
    deep supervision the pseudo mask is what carries the loss to the previous block's map head."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*opts)).train()
    losses = model(_train_batch())
    deep = model.block_loss_weight > 0
    assert set(losses) == {"loss_sem_seg"} | ({f"loss_block{i}" for i in range(len(model.blocks))} if deep else set())
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # SAM's "not a point" token pads the points only when no box is given, or a class with fewer kept pixels than
    # N_o: with boxes it is used, but its gradient depends on the batch.
    data_dependent = {f"blocks.{i}.sam.prompt_encoder.not_a_point_embed.weight" for i in range(len(model.blocks))}
    no_grad = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or (p.grad.abs().sum() == 0 and name not in data_dependent))
    ]
    assert no_grad == []
    if model.blocks[0].use_sam and "mask" in model.blocks[0].sam.prompt_types:
        assert model.prompt_logit_scale.grad.abs() > 0
        for block in model.blocks:
            assert block.sam.transformer.layers[0].cross_attn_token_to_image.q_proj.weight.grad.abs().sum() > 0


def test_activation_checkpointing_gives_the_same_losses_and_gradients():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    batch = _train_batch()
    runs = []
    for checkpointing in (False, True):
        model.activation_checkpointing = checkpointing
        model.zero_grad()
        losses = model(batch)
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        runs.append(({k: v.detach() for k, v in losses.items()}, grads))
    (plain_losses, plain_grads), (ckpt_losses, ckpt_grads) = runs
    torch.testing.assert_close(ckpt_losses, plain_losses)
    assert ckpt_grads.keys() == plain_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(ckpt_grads[name], plain_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_training_label_outside_vocabulary_is_reported():
    model = build_model(tiny_cfg()).train()
    with pytest.raises(ValueError, match="outside"):
        model(_train_batch(num_classes=4, vocabulary=["cat", "dog"]))


def test_optimizer_multipliers_clipping_and_frozen_clip_weights():
    cfg = tiny_cfg(
        "MODEL.ESC_NET.CLIP_FINETUNE",
        "attention",
        "SOLVER.CLIP_MULTIPLIER",
        0.01,
        "SOLVER.SAM_MULTIPLIER",
        0.1,
        "SOLVER.WEIGHT_DECAY",
        0.1,
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE",
        0.01,
    )
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    base = cfg.SOLVER.BASE_LR
    params = dict(model.named_parameters())
    for name, p in params.items():
        if not p.requires_grad:
            assert id(p) not in lr_of
            continue
        if name.startswith("clip."):
            expected = base * 0.01
        elif ".sam.prompt_encoder." in name or ".sam.transformer." in name:
            expected = base * 0.1
        else:
            expected = base
        assert lr_of[id(p)] == pytest.approx(expected), name
    frozen_before = {n: p.detach().clone() for n, p in model.clip.state_dict().items()}
    for _ in range(2):
        optimizer.zero_grad()
        sum(model(_train_batch()).values()).backward()
        optimizer.step()
        total_norm = torch.norm(torch.stack([p.grad.norm() for p in params.values() if p.grad is not None]))
        assert total_norm <= 0.01 * (1 + 1e-4)  # clipped over the full model
    after = model.clip.state_dict()
    changed = {n for n, t in after.items() if not torch.equal(t, frozen_before[n])}
    assert changed, "q and v should train"
    # only the packed q/k/v projections change, and within them only the q and v thirds (k is frozen)
    assert all(n.endswith(("attn.in_proj_weight", "attn.in_proj_bias")) for n in changed), sorted(changed)
    for n in changed:
        width = after[n].shape[0] // 3
        assert torch.equal(after[n][width : 2 * width], frozen_before[n][width : 2 * width]), n


def _clip_like_correlation():
    """[1, 3, 24, 24] cosines with the statistics of CLIP ViT-B/16 at 384: background about 0.18 with noise 0.03;
    class 0 has one compact object (45 cells) at 0.28-0.33, class 1 two separated objects, class 2 is absent."""
    g = torch.Generator().manual_seed(0)
    corr = 0.18 + 0.03 * torch.randn(1, 3, 24, 24, generator=g)
    objects = {0: [(slice(5, 10), slice(10, 19))], 1: [(slice(2, 7), slice(1, 8)), (slice(16, 22), slice(15, 22))]}
    for c, regions in objects.items():
        for rows, cols in regions:
            shape = (rows.stop - rows.start, cols.stop - cols.start)
            corr[0, c, rows, cols] = 0.28 + 0.05 * torch.rand(shape, generator=g)
    return corr, objects


@pytest.fixture(scope="module")
def openai_like_clip(tmp_path_factory):
    """A tiny open_clip CLIP saved as a weights file with OpenAI CLIP's logit scale (100)."""
    import copy
    import math

    import open_clip
    import safetensors.torch

    from conftest import TINY_CLIP_CFG

    torch.manual_seed(0)
    clip = open_clip.CLIP(**copy.deepcopy(TINY_CLIP_CFG))
    clip.logit_scale.data.fill_(math.log(100.0))
    path = tmp_path_factory.mktemp("clip") / "open_clip_model.safetensors"
    safetensors.torch.save_file(clip.state_dict(), str(path))
    return str(path)


def test_block1_pseudo_prompts_find_the_objects(openai_like_clip):
    """Block 1's real path (CLIP logit scale, spatial softmax, threshold, K-means) on CLIP-like cosines: the points
    land on the objects and the kept region is the object, not half the image."""
    model = build_model(tiny_cfg("MODEL.ESC_NET.CLIP_PRETRAINED", openai_like_clip, "MODEL.ESC_NET.NUM_POINTS", 5))
    assert model.prompt_logit_scale.exp().item() == pytest.approx(100.0, rel=1e-4)
    corr, objects = _clip_like_correlation()
    with torch.no_grad():
        prompts = model.blocks[0].prompt_generator(model.first_prompt_map(corr))

    def on(point, regions):
        x, y = int(point[0]), int(point[1])
        return any(rows.start <= y < rows.stop and cols.start <= x < cols.stop for rows, cols in regions)

    real = prompts.labels == 1
    points0 = prompts.points[0][real[0]]
    assert len(points0) == 5 and sum(on(p, objects[0]) for p in points0) >= 4
    for region in objects[1]:
        assert any(on(p, [region]) for p in prompts.points[1][real[1]])
    kept = (prompts.masks[:, 0] > 0).flatten(1).float().mean(dim=1)
    assert kept[0] <= 0.12 and kept[1] <= 0.2  # the objects cover 7.8% and 13.5% of the image


def test_ablation_switches_change_the_forward_pass():
    """PROMPT_TYPES, USE_SAM_BLOCK, NUM_BLOCKS and NUM_POINTS do what the README says."""
    inputs = [{"image": _image(64, 64), "height": 64, "width": 64, "vocabulary": ["cat", "dog", "grass"]}]
    build = _model

    model = build("MODEL.ESC_NET.NUM_BLOCKS", 3, "MODEL.ESC_NET.NUM_POINTS", 4)
    assert len(model.blocks) == 3 and model.blocks[0].prompt_generator.num_points == 4
    tokens = {}
    model.blocks[0].sam.transformer.layers[0].norm1.register_forward_hook(
        lambda module, args, out: tokens.update(default=out.shape)
    )
    model(inputs)
    assert tokens["default"] == (3, 1 + 4 + 1, 32)  # text token, 4 points, SAM's "not a point" padding

    no_sam = build("MODEL.ESC_NET.USE_SAM_BLOCK", False)
    assert not any(hasattr(b, "sam") or hasattr(b, "prompt_generator") for b in no_sam.blocks)
    assert no_sam.prompt_logit_scale is None
    assert no_sam(inputs)[0]["sem_seg"].shape == (3, 64, 64)

    for types, expected_tokens in ((["mask"], 1), (["points"], 1 + 3 + 1), (["boxes", "mask"], 1 + 2)):
        model = build("MODEL.ESC_NET.PROMPT_TYPES", types, "MODEL.ESC_NET.BLOCK_LOSS_WEIGHT", 0.4)
        sam = model.blocks[0].sam
        seen = {}
        sam.transformer.layers[0].norm1.register_forward_hook(
            lambda module, args, out: seen.update(tokens=out.shape[1])
        )
        sam.prompt_encoder.register_forward_hook(
            lambda module, args, kwargs, out: seen.update(kwargs), with_kwargs=True
        )
        sam.prompt_encoder.mask_downscaling[0].register_forward_hook(lambda *_: seen.update(mask_encoded=True))
        model(inputs)
        assert seen["tokens"] == expected_tokens, types
        assert (seen["points"] is not None) == ("points" in types)
        assert (seen["boxes"] is not None) == ("boxes" in types)
        assert seen.get("mask_encoded", False) == ("mask" in types)
    with pytest.raises(ValueError, match="PROMPT_TYPES"):
        build("MODEL.ESC_NET.PROMPT_TYPES", ["points", "scribbles"])
    with pytest.raises(ValueError, match="BLOCK_LOSS_WEIGHT > 0"):
        build("MODEL.ESC_NET.PROMPT_TYPES", ["points"], "MODEL.ESC_NET.BLOCK_LOSS_WEIGHT", 0.0)


def test_missing_sam_checkpoint_is_reported(tmp_path):
    missing = str(tmp_path / "sam_vit_b_01ec64.pth")
    with pytest.raises(FileNotFoundError, match="sam_vit_b_01ec64.pth"):
        build_model(tiny_cfg("MODEL.ESC_NET.SAM_CHECKPOINT", missing))


def test_class_chunks_do_not_change_scores_and_swin_shifts_alternate():
    """CLASS_CHUNK only bounds memory: the scores and the training gradients are those of all classes at once."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg("MODEL.ESC_NET.NUM_BLOCKS", 3, "MODEL.ESC_NET.CLASS_CHUNK", 0))
    shifts = [block.vlf.image_guidance.blocks[0].shift_size for block in model.blocks]
    assert shifts == [(0, 0), (2, 2), (0, 0)]  # window 4 on the tiny 8x8 grid: regular, shifted, regular
    inputs = [{"image": _image(64, 64), "height": 64, "width": 64, "vocabulary": _things(7)}]
    model.eval()
    whole = model(inputs)[0]["sem_seg"]
    model.train()
    batch = _train_batch()
    sum(model(batch).values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for chunk in (1, 3):
        for module in model.modules():
            if hasattr(module, "class_chunk"):
                module.class_chunk = chunk
        model.eval()
        torch.testing.assert_close(model(inputs)[0]["sem_seg"], whole, atol=1e-5, rtol=1e-5)
        model.train()
        model.zero_grad()
        sum(model(batch).values()).backward()
        for name, grad in grads.items():
            torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)


def test_training_vocabulary_larger_than_the_class_cap_is_refused():
    """The class-count protocol is the same in training and at inference: a training vocabulary that inference
    would cut is refused, naming the key."""
    model = build_model(tiny_cfg("MODEL.ESC_NET.MAX_CLASSES_PER_VIEW", 3)).train()
    with pytest.raises(ValueError, match=r"4 classes, more than MODEL\.ESC_NET\.MAX_CLASSES_PER_VIEW \(3\)"):
        model(_train_batch())
    model.inference = model.inference.replace(max_classes_per_view=4)
    assert torch.isfinite(sum(model(_train_batch()).values()))


def test_class_attention_pad_must_exceed_the_training_vocabulary():
    """Padding tokens that a training vocabulary never needs would get no gradient (DistributedDataParallel waits for
    one): such a pad length is refused when training starts, with both numbers."""
    from detectron2.utils.events import EventStorage

    model = build_model(tiny_cfg("MODEL.ESC_NET.CLASS_ATTENTION_PAD", "2")).train()
    batch = [
        {
            "image": torch.zeros(3, 64, 64, dtype=torch.uint8),
            "sem_seg": torch.zeros(64, 64, dtype=torch.long),
            "vocabulary": ["cat", "dog"],
        }
    ]
    with EventStorage(0), pytest.raises(ValueError, match=r"CLASS_ATTENTION_PAD \(2\).*2 classes"):
        model(batch)
    padded = build_model(tiny_cfg("MODEL.ESC_NET.CLASS_ATTENTION_PAD", "4")).train()
    with EventStorage(0):
        losses = padded(batch)
    sum(losses.values()).backward()
    assert padded.blocks[0].vlf.text_guidance.pad_token.grad.abs().sum() > 0


def test_random_clip_is_warned_about_only_when_no_weights_will_load(caplog):
    """A config with MODEL.WEIGHTS gets every tensor from the checkpoint: CLIP_PRETRAINED "none" is not news."""
    logger = logging.getLogger("esc_net.modeling")  # the backbone's and the blocks' messages
    logger.addHandler(caplog.handler)  # the "esc_net" logger may not propagate (Detectron2's setup_logger)
    try:
        with caplog.at_level(logging.INFO):
            build_model(tiny_cfg("MODEL.WEIGHTS", "trained.pth", "MODEL.ESC_NET.ALLOW_RANDOM_SAM", False))
        assert "randomly initialised" not in caplog.text and "random weights" not in caplog.text
        with caplog.at_level(logging.INFO):
            build_model(tiny_cfg("MODEL.ESC_NET.ALLOW_RANDOM_SAM", False))
    finally:
        logger.removeHandler(caplog.handler)
    assert (
        "CLIP tiny-clip is randomly initialised (MODEL.ESC_NET.CLIP_PRETRAINED 'none') and MODEL.WEIGHTS is "
        "empty" in caplog.text
    )
    assert "the SAM blocks keep random weights" in caplog.text


def test_reference_implementation_computes_the_same_model():
    """IMPLEMENTATION "reference" (the ESC-Blocks in the paper's order on all classes at once, segment_anything's
    TwoWayTransformer, the plain decoder) and "fast" give the same scores, and the same training losses and gradients,
    for the same weights."""
    fast = _model()
    reference = _model("MODEL.ESC_NET.IMPLEMENTATION", "reference")
    reference.load_state_dict(fast.state_dict())
    assert (fast.implementation, reference.implementation) == ("fast", "reference")
    inputs = [{"image": _image(64, 64), "height": 64, "width": 64, "vocabulary": ["cat", "dog", "grass"]}]
    with torch.no_grad():
        torch.testing.assert_close(reference(inputs)[0]["sem_seg"], fast(inputs)[0]["sem_seg"], atol=1e-5, rtol=1e-4)
    batch, losses, grads = _train_batch(), [], []
    for model in (fast, reference):
        model.train()
        loss = sum(model(batch).values())
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-4)
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-4, rtol=1e-3, msg=name)


def test_checkpoints_with_the_former_map_head_name_load():
    """The 1x1 map head was called corr_head: checkpoints written then load into map_head."""
    model = _model()
    state = {k.replace(".map_head.", ".corr_head."): v for k, v in model.state_dict().items()}
    assert any(".corr_head." in k for k in state)
    other = _model()
    other.load_state_dict(state)
    torch.testing.assert_close(other.blocks[0].map_head.weight, model.blocks[0].map_head.weight)


def test_model_weights_make_the_part_files_unread(tmp_path):
    """With MODEL.WEIGHTS, the whole model's checkpoint holds every tensor: CLIP_PRETRAINED and SAM_CHECKPOINT are
    not read (here they name no file), so evaluating a checkpoint needs neither file nor network."""
    missing = str(tmp_path / "nowhere.pt")
    model = build_model(
        tiny_cfg(
            "MODEL.WEIGHTS",
            "model.pth",
            "MODEL.ESC_NET.CLIP_PRETRAINED",
            missing,
            "MODEL.ESC_NET.SAM_CHECKPOINT",
            missing,
        )
    )
    assert len(model.blocks) == 2
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        build_model(tiny_cfg("MODEL.ESC_NET.CLIP_PRETRAINED", missing))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MODEL.ESC_NET.LOSS", "focal", r"MODEL\.ESC_NET\.LOSS must be one of \['bce', 'ce'\], got 'focal'"),
        ("MODEL.ESC_NET.PSEUDO_MASK", "union", r"PSEUDO_MASK must be one of"),
        ("MODEL.ESC_NET.IMPLEMENTATION", "fastest", r"IMPLEMENTATION must be one of \['fast', 'reference'\]"),
        ("MODEL.ESC_NET.PROMPT_TYPES", ["points", "points"], r"distinct entries"),
        ("MODEL.ESC_NET.DECODER_DIMS", [32], r"DECODER_DIMS \[32\], .*one entry of each per upsampling stage"),
        ("MODEL.ESC_NET.CLIP_SKIP_LAYERS", [1], r"backbone's 1 skip features \(MODEL\.ESC_NET\.CLIP_SKIP_LAYERS\)"),
        ("MODEL.ESC_NET.CLIP_FINETUNE", "some", r"CLIP_FINETUNE must be one of \['attention', 'attention_with_bias'"),
        ("MODEL.ESC_NET.INFERENCE_MODE", "tiles", r"INFERENCE_MODE must be one of \['sliding', 'whole'\]"),
        ("MODEL.ESC_NET.CLASS_CHUNK", -1, r"CLASS_CHUNK must be at least 0, got -1"),
        ("MODEL.ESC_NET.SAM_IMAGE_PROJECTION", "attention", r"SAM_IMAGE_PROJECTION must be one of \['linear', 'mlp'"),
        ("MODEL.ESC_NET.SAM_ALIGN_LOSS_WEIGHT", -1.0, r"SAM_ALIGN_LOSS_WEIGHT must be at least 0, got -1\.0"),
        ("INPUT.FORMAT", "YUV", r"INPUT\.FORMAT must be one of \['RGB', 'BGR'\], got 'YUV'"),
    ],
)
def test_each_module_checks_the_keys_it_reads(key, value, message):
    """The module that reads a key checks its value, once, naming the key, its value and what it may be."""
    with pytest.raises(ValueError, match=message):
        build_model(tiny_cfg(key, value))
