"""Stage 1 of the laboratory: contrastive pre-training of a tiny open_clip CLIP on captioned Synthetic Shapes.

Every image is captioned with what it shows ("a photo of a red star and a blue bar on stripes."), every class of
the world included: CLIP sees every concept at image level, as real CLIP has seen the names that segmentation
datasets lack. The model is open_clip's own ``CLIP`` built from ESC-Net's ``CLIP_MODEL_CFG``, the loss open_clip's
``ClipLoss``; the loop is ours. The result is an open_clip state dict that ``MODEL.ESC_NET.CLIP_PRETRAINED`` loads.

Zero-shot evaluation, as CLIP papers report ImageNet zero-shot: held-out images of one object each are classified
among the 36 object names with the prompt "a photo of a {}." (top-1), and the texture among the 3 stuff names.
"""

import logging
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from open_clip.loss import ClipLoss

from esc_net.data.synthetic_shapes import (
    OBJECT_CLASSES,
    SEEN_OBJECTS,
    STUFF_CLASSES,
    UNSEEN_COMBINATIONS,
    caption,
    color_and_kind,
    render_sample,
    sample_rng,
)
from esc_net.modeling.clip.build import build_open_clip
from esc_net.pretrain.common import (
    RenderedPool,
    Schedule,
    finish_stage,
    fit,
    random_dihedral,
    save_report,
    to_model_input,
)
from esc_net.utils.provenance import provenance

logger = logging.getLogger("esc_net.pretrain")

ZERO_SHOT_TEMPLATE = "a photo of a {}."


def build_clip(model_cfg: Dict, image_size: int) -> Tuple[torch.nn.Module, Callable]:
    """open_clip's CLIP for the config ``model_cfg`` (embed_dim, vision_cfg, text_cfg) at ``image_size``, built as
    ESC-Net builds it (:func:`~esc_net.modeling.clip.build.build_open_clip`), with random weights; and its
    tokenizer."""
    model, tokenizer, _ = build_open_clip("the laboratory's CLIP", "none", model_cfg, image_size)
    return model, tokenizer


def captioned_image(seed: int, stream: str, index: int, image_size: int, max_shapes: int) -> Tuple[np.ndarray, str]:
    """Image ``index`` of ``stream`` (1 to ``max_shapes`` objects of any class; [S, S, 3] uint8) and its caption."""
    sample = render_sample(sample_rng(seed, stream, index), OBJECT_CLASSES, image_size, max_shapes, 0)
    return sample.image, caption(sample)


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, image_size: int, seed: int, count: int = 360) -> Dict[str, float]:
    """Zero-shot classification of ``count`` held-out one-object images, in percent.

    Returns:
        ``object`` (36-way top-1), ``color`` and ``kind`` (the predicted name's colour / kind is right),
        ``seen``, ``unseen combination`` and ``unseen kind`` (36-way top-1 on the images of each group of the
        segmentation split), and ``texture`` (3-way top-1 among the stuff names).
    """
    model.eval()
    images, objects, textures = [], [], []
    for i in range(count):
        sample = render_sample(sample_rng(seed, "clip_eval", i), OBJECT_CLASSES, image_size, 1, 0)
        images.append(sample.image)
        objects.append(sample.shapes[0].name)
        textures.append(STUFF_CLASSES[sample.stuff])
    image_features = model.encode_image(to_model_input(np.stack(images)), normalize=True)

    def predict(names: List[str]) -> List[str]:
        text = model.encode_text(tokenizer([ZERO_SHOT_TEMPLATE.format(n) for n in names]), normalize=True)
        return [names[j] for j in (image_features @ text.T).argmax(dim=1).tolist()]

    predicted, predicted_texture = predict(OBJECT_CLASSES), predict(list(STUFF_CLASSES))

    def percent(hits: List[bool]) -> Optional[float]:
        return 100.0 * float(np.mean(hits)) if hits else None  # None: no image of the group was drawn

    def group(name: str) -> str:
        if name in SEEN_OBJECTS:
            return "seen"
        return "unseen combination" if name in UNSEEN_COMBINATIONS else "unseen kind"

    pairs = list(zip(objects, predicted))
    report = {
        "object": percent([t == p for t, p in pairs]),
        "color": percent([color_and_kind(t)[0] == color_and_kind(p)[0] for t, p in pairs]),
        "kind": percent([color_and_kind(t)[1] == color_and_kind(p)[1] for t, p in pairs]),
        "texture": percent([t == p for t, p in zip(textures, predicted_texture)]),
    }
    for name in ("seen", "unseen combination", "unseen kind"):
        report[name] = percent([t == p for t, p in pairs if group(t) == name])
    report["images"] = count
    return report


def pretrain_clip(
    model_cfg: Dict,
    image_size: int,
    output: str,
    *,
    steps: int = 15000,
    batch_size: int = 128,
    num_images: int = 65536,
    lr: float = 4e-3,
    weight_decay: float = 0.1,
    warmup: int = 100,
    max_shapes: int = 1,
    seed: int = 0,
    log_period: int = 100,
    eval_images: int = 360,
    eval_period: int = 0,
    report_path: Optional[str] = None,
) -> Dict:
    """Trains the CLIP of ``model_cfg`` contrastively and saves its state dict to ``output``.

    ``num_images`` captioned images (1 to ``max_shapes`` objects each, each drawn once, when a batch first needs
    it) are shown in random order with a random flip / rotation per batch, for ``steps`` steps of ``batch_size``;
    AdamW with a warm-up and a cosine decay. The defaults are the ones the laboratory measured best
    (docs/laboratory.md, "Stage 1"). With ``eval_period``, the zero-shot accuracies are also measured every
    ``eval_period`` steps (the learning curve). Returns (and, with ``report_path``, writes as JSON) the settings,
    the losses and the zero-shot accuracies before and after training (see
    :func:`~esc_net.pretrain.common.finish_stage`).

    Raises:
        ValueError: settings that cannot train (see :meth:`Schedule.check`), before any work.
        FloatingPointError: the loss diverged; nothing is saved.
    """
    schedule = Schedule(steps, batch_size, lr, weight_decay, warmup)
    schedule.check(num_images, eval_period, eval_images)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    started = (time.perf_counter(), provenance())  # what ran, as it started
    model, tokenizer = build_clip(model_cfg, image_size)

    def render(index: int) -> Tuple[np.ndarray, np.ndarray]:
        image, text = captioned_image(seed, "clip", index, image_size, max_shapes)
        return image, tokenizer([text])[0].numpy()

    pool = RenderedPool(render, num_images)
    before = zero_shot_accuracy(model, tokenizer, image_size, seed + 1, eval_images)
    loss_fn = ClipLoss()

    def step_loss(index: np.ndarray) -> torch.Tensor:
        images, tokens = pool.take(index)
        batch, _ = random_dihedral(images, None, rng)
        return loss_fn(*model(to_model_input(batch), torch.from_numpy(tokens)))

    curve = []

    def after_step(done: int) -> None:
        with torch.no_grad():  # CLIP's clamp: the temperature stays below 100
            model.logit_scale.clamp_(0, np.log(100.0))
        if eval_period and done % eval_period == 0 and done < steps:
            curve.append({"step": done, **zero_shot_accuracy(model, tokenizer, image_size, seed + 1, eval_images)})
            logger.info("CLIP zero-shot at step %d: %s", done, _summary(curve[-1]))
            model.train()

    losses = fit(model, schedule, num_images, rng, step_loss, "clip", log_period, after_step)
    after = zero_shot_accuracy(model, tokenizer, image_size, seed + 1, eval_images)
    settings = {**schedule._asdict(), "num_images": num_images, "max_shapes": max_shapes, "seed": seed}
    settings.update(image_size=image_size, template=ZERO_SHOT_TEMPLATE, eval_images=eval_images)
    results = {"zero_shot_untrained": before, "zero_shot": after, "learning_curve": curve}
    report = finish_stage(model.state_dict(), output, {"settings": settings, **results}, losses, log_period, started)
    logger.info("CLIP zero-shot (%d held-out images): %s", eval_images, _summary(after))
    if report_path:
        save_report(report, report_path)
    return report


def _summary(accuracy: Dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}%" for k, v in accuracy.items() if k not in ("images", "step") and v is not None)
