"""Stage 2 of the laboratory: class-agnostic pre-training of a tiny SAM on Synthetic Shapes objects.

The model is segment_anything's own ``Sam``: an ``ImageEncoderViT``, a ``PromptEncoder`` and a ``MaskDecoder``
around a ``TwoWayTransformer``, the decoder sized as ESC-Net's SAM block (``SAM_EMBED_DIM``, ``SAM_DEPTH``,
``SAM_MLP_DIM``, ``SAM_NUM_HEADS``). Every image shows 1 to 3 objects of any class; each training example prompts
one visible object, in one of SAM's ways:

* one point inside it, with SAM's three candidate masks (an ambiguous prompt): the loss is that of the best one;
* 2 to 5 points inside it; its bounding box (corners jittered by up to a tenth of its size); a coarse mask of it
  (blurred, eroded or dilated, as logits), alone or with 1 to 3 points. These predict one mask.

The mask loss is binary cross-entropy plus dice at the input resolution; the IoU head regresses the IoU of each
predicted mask (mean squared error), as in SAM. ESC-Net prompts SAM with points and a mask, so those prompt kinds
are trained; boxes keep the box embeddings meaningful for the box-prompt ablation.

The saved file is ``Sam.state_dict()`` written with ``torch.save``, the format of ``sam_vit_b_01ec64.pth``;
``MODEL.ESC_NET.SAM_CHECKPOINT`` reads its prompt encoder and decoder transformer from it.

Evaluation: the IoU of the mask SAM picks (highest predicted IoU of the three) for one random point inside each of
a few hundred held-out objects, for the trained model and for the same model untrained.
"""

import logging
import time
from functools import partial
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import cv2
import numpy as np
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn
from torch.nn import functional as F

from esc_net.data.synthetic_shapes import OBJECT_CLASSES, instance_masks, render_sample, sample_rng
from esc_net.pretrain.common import (
    RenderedPool,
    Schedule,
    finish_stage,
    fit,
    random_dihedral,
    save_report,
    to_model_input,
)
from esc_net.utils.checkpoint import READ_ERRORS, unreadable_weights_error
from esc_net.utils.provenance import provenance

logger = logging.getLogger("esc_net.pretrain")

# Objects smaller than this many visible pixels are not prompted (a sliver under another object).
MIN_OBJECT_PIXELS = 24
PROMPT_KINDS = ("point", "points", "box", "mask")
# The official SAM variants, recognised by the width of their image encoder (segment_anything's registry names).
OFFICIAL_SAM_VARIANTS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
# The laboratory's image encoder has one attention head per 32 channels.
LAB_ENCODER_HEAD_WIDTH = 32


def build_sam(
    image_size: int,
    embed_dim: int,
    depth: int,
    mlp_dim: int,
    num_heads: int,
    *,
    patch_size: int = 8,
    encoder_width: int = 64,
    encoder_depth: int = 4,
    encoder_heads: int = 64 // LAB_ENCODER_HEAD_WIDTH,
) -> Sam:
    """A segment_anything ``Sam`` at ``image_size``: a ViT image encoder (global attention) whose neck ends in
    ``embed_dim`` channels, SAM's prompt encoder, and SAM's mask decoder with a ``TwoWayTransformer`` of the given
    sizes (the sizes of ESC-Net's SAM block). Its pixel statistics (``Sam.pixel_mean/pixel_std``, not saved in
    the state dict) are OpenAI CLIP's, the normalisation its images are trained with (:func:`to_model_input`)."""
    grid = image_size // patch_size
    encoder = ImageEncoderViT(
        img_size=image_size,
        patch_size=patch_size,
        embed_dim=encoder_width,
        depth=encoder_depth,
        num_heads=encoder_heads,
        out_chans=embed_dim,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=False,
        window_size=0,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )
    decoder = MaskDecoder(
        transformer_dim=embed_dim,
        transformer=TwoWayTransformer(depth=depth, embedding_dim=embed_dim, mlp_dim=mlp_dim, num_heads=num_heads),
        num_multimask_outputs=3,
        iou_head_hidden_dim=embed_dim,
    )
    mean, std = [255.0 * v for v in OPENAI_DATASET_MEAN], [255.0 * v for v in OPENAI_DATASET_STD]
    return Sam(encoder, prompt_encoder, decoder, pixel_mean=mean, pixel_std=std)


def sam_from_checkpoint(path: str, decoder_heads: int) -> Sam:
    """The whole segment_anything ``Sam`` (image encoder included) that an official-format checkpoint holds, with
    its weights, in eval mode.

    An official checkpoint (``sam_vit_b_01ec64.pth`` and its ViT-L / ViT-H siblings) is recognised by its image
    encoder's width and built by segment_anything's registry; any other is taken for one of the laboratory's
    (:func:`build_sam`, its geometry read from the tensors' shapes). Attention head counts are not in a state dict:
    the decoder's, ``decoder_heads``, is the config's ``SAM_NUM_HEADS``.

    Raises:
        ValueError: naming the file when it cannot be read, holds no image encoder, or does not fit the model it
            describes (listing the missing and unexpected keys).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except READ_ERRORS as error:
        raise unreadable_weights_error(path, error) from error
    patch_weight = state.get("image_encoder.patch_embed.proj.weight") if isinstance(state, dict) else None
    if patch_weight is None:
        raise ValueError(
            f"{path} holds no SAM image encoder (image_encoder.patch_embed.proj.weight): SAM's own image embedding "
            "needs a whole SAM checkpoint in the official format, such as sam_vit_b_01ec64.pth"
        )
    width, patch = patch_weight.shape[0], patch_weight.shape[-1]
    if width in OFFICIAL_SAM_VARIANTS:
        sam = sam_model_registry[OFFICIAL_SAM_VARIANTS[width]]()
    else:

        def count(prefix: str) -> int:
            return len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)})

        sam = build_sam(
            state["image_encoder.pos_embed"].shape[1] * patch,
            embed_dim=state["image_encoder.neck.0.weight"].shape[0],
            depth=count("mask_decoder.transformer.layers."),
            mlp_dim=state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
            num_heads=decoder_heads,
            patch_size=patch,
            encoder_width=width,
            encoder_depth=count("image_encoder.blocks."),
            encoder_heads=max(1, width // LAB_ENCODER_HEAD_WIDTH),
        )
    missing, unexpected = sam.state_dict().keys() - state.keys(), state.keys() - sam.state_dict().keys()
    mismatched = [k for k in sam.state_dict().keys() & state.keys() if sam.state_dict()[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{path} does not fit the SAM it describes (image encoder of width {width}): missing keys "
            f"{sorted(missing)}, unexpected keys {sorted(unexpected)}, shape mismatches {sorted(mismatched)}"
        )
    sam.load_state_dict(state)
    return sam.eval()


def decode_masks(
    decoder: MaskDecoder,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.predict_masks`` for a batch of images with one prompt each.

    segment_anything's decoder repeats one image's embedding for every prompt it is given, so several images need
    one call each; this runs the same layers of ``decoder`` once for the whole batch (tested to equal
    ``predict_masks`` image by image).

    Args:
        image_embeddings: [B, E, h, w]; image_pe: [1, E, h, w]; sparse: [B, T, E]; dense: [B, E, h, w].
    Returns:
        masks [B, 1 + num_multimask_outputs, 4h, 4w] (logits; index 0 is the single-mask output) and
        iou_pred [B, 1 + num_multimask_outputs].
    """
    B, E, h, w = image_embeddings.shape
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.expand(B, -1, -1), sparse), dim=1)
    hs, src = decoder.transformer(image_embeddings + dense, image_pe.expand(B, -1, -1, -1), tokens)
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(B, E, h, w))
    mask_tokens = hs[:, 1 : 1 + decoder.num_mask_tokens]
    hyper_in = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1)
    masks = (hyper_in @ upscaled.flatten(2)).view(B, -1, *upscaled.shape[-2:])
    return masks, decoder.iou_prediction_head(hs[:, 0])


class ObjectPool(NamedTuple):
    """Pre-drawn images and the visible mask of one object per image: images [n, S, S, 3] uint8, masks [n, S, S]
    bool."""

    images: np.ndarray
    masks: np.ndarray


def object_example(seed: int, stream: str, index: int, image_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of ``stream`` (1 to 3 objects of any class; [S, S, 3] uint8) and the visible mask of one of
    its objects ([S, S] bool; picked at random among those with at least MIN_OBJECT_PIXELS visible pixels)."""
    rng = sample_rng(seed, stream, index)
    sample = render_sample(rng, OBJECT_CLASSES, image_size, 3, 0)
    visible = instance_masks(sample)
    large = np.flatnonzero(visible.reshape(len(visible), -1).sum(1) >= MIN_OBJECT_PIXELS)
    # The top object is always whole, so an image has at least one large object.
    return sample.image, visible[rng.choice(large)]


def render_objects(seed: int, stream: str, count: int, image_size: int) -> ObjectPool:
    """Images 0 to ``count`` - 1 of ``stream`` with their objects' masks (:func:`object_example`)."""
    examples = [object_example(seed, stream, i, image_size) for i in range(count)]
    return ObjectPool(*(np.stack(parts) for parts in zip(*examples)))


def _random_points(masks: np.ndarray, counts: List[int], rng: np.random.Generator) -> np.ndarray:
    """[B, max(counts), 2] (x, y) pixel coordinates of ``counts[b]`` distinct random pixels of ``masks[b]``, padded
    with (0, 0); the caller labels padding -1."""
    points = np.zeros((len(masks), max(counts), 2), np.float32)
    for b, (mask, n) in enumerate(zip(masks, counts)):
        ys, xs = np.nonzero(mask)
        pick = rng.choice(len(xs), size=min(n, len(xs)), replace=False)
        points[b, : len(pick)] = np.stack([xs[pick], ys[pick]], axis=1)
    return points


def _point_prompt(masks: np.ndarray, counts: List[int], rng: np.random.Generator):
    coords = torch.from_numpy(_random_points(masks, counts, rng))
    labels = (torch.arange(coords.shape[1])[None] < torch.tensor(counts)[:, None]).long() * 2 - 1
    return coords, labels


def _boxes(masks: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """[B, 4] (x0, y0, x1, y1) boxes of the masks, every corner moved by up to a tenth of the box's side."""
    boxes = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
        side = np.array([box[2] - box[0], box[3] - box[1]] * 2, np.float32) + 1
        boxes.append(box + rng.uniform(-0.1, 0.1, size=4) * side)
    return torch.from_numpy(np.stack(boxes).astype(np.float32))


def _coarse_masks(masks: np.ndarray, size: Tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """[B, 1, *size] mask-prompt logits: each mask eroded or dilated by up to 2 pixels, blurred, resized to the
    prompt encoder's input and mapped to logits (probability 0.5 -> 0), as a rough earlier prediction would be."""
    prompts = []
    for mask in masks:
        m = mask.astype(np.uint8)
        k = int(rng.integers(-2, 3))
        if k:
            kernel = np.ones((2 * abs(k) + 1,) * 2, np.uint8)
            m = cv2.dilate(m, kernel) if k > 0 else cv2.erode(m, kernel)
        p = cv2.GaussianBlur(m.astype(np.float32), (0, 0), sigmaX=float(rng.uniform(0.5, 2.0)))
        prompts.append(cv2.resize(p, size[::-1], interpolation=cv2.INTER_AREA))
    p = torch.from_numpy(np.stack(prompts))[:, None]
    return torch.logit(p.clamp(1e-4, 1 - 1e-4))


def _mask_losses(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + dice of every mask [B, K, S, S] against the target [B, S, S] -> [B, K]."""
    target = target[:, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(2, 3))
    p = logits.sigmoid()
    dice = 1 - (2 * (p * target).sum((2, 3)) + 1) / (p.sum((2, 3)) + target.sum((2, 3)) + 1)
    return bce + dice


def _iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of every thresholded mask [B, K, S, S] with the target [B, S, S] -> [B, K]."""
    pred, target = logits > 0, target[:, None].bool()
    inter = (pred & target).sum((2, 3)).float()
    return inter / (pred | target).sum((2, 3)).clamp(min=1).float()


def prompted_masks(sam: Sam, embeddings: torch.Tensor, masks: np.ndarray, kind: str, rng: np.random.Generator):
    """SAM's masks for prompts of ``kind`` on the objects ``masks`` [B, S, S] of images already encoded.

    Returns:
        logits [B, K, S, S] at the input resolution (K = 3 candidates for "point", else 1) and the matching
        predicted IoUs [B, K].
    """
    encoder = sam.prompt_encoder
    B = len(masks)
    points = boxes = dense_masks = None
    if kind == "point":
        points = _point_prompt(masks, [1] * B, rng)
    elif kind == "points":
        points = _point_prompt(masks, rng.integers(2, 6, size=B).tolist(), rng)
    elif kind == "box":
        boxes = _boxes(masks, rng)
    else:
        dense_masks = _coarse_masks(masks, encoder.mask_input_size, rng)
        if rng.random() < 0.5:
            points = _point_prompt(masks, rng.integers(1, 4, size=B).tolist(), rng)
    sparse, dense = encoder(points=points, boxes=boxes, masks=dense_masks)
    logits, iou_pred = decode_masks(sam.mask_decoder, embeddings, encoder.get_dense_pe(), sparse, dense)
    outputs = slice(1, None) if kind == "point" else slice(0, 1)
    logits = F.interpolate(logits[:, outputs], size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return logits, iou_pred[:, outputs]


@torch.no_grad()
def single_point_iou(
    sam: Sam,
    pool: ObjectPool,
    seed: int,
    batch_size: int = 100,
    embed: Optional[Callable[[np.ndarray], torch.Tensor]] = None,
    pick: str = "predicted",
) -> float:
    """Mean IoU (percent) of SAM's mask for one random point inside each object of ``pool`` (the same points for
    the same ``seed``).

    Args:
        embed: images [B, S, S, 3] uint8 -> the image embedding [B, E, h, w] SAM's mask decoder reads (default:
            SAM's own image encoder).
        pick: which of SAM's three masks counts: "predicted" (the highest predicted IoU, as SAM picks) or "best"
            (the best of the three, SAM's oracle figure: it reads the decoder's masks without its IoU head).
    """
    if pick not in ("predicted", "best"):
        raise ValueError(f"pick must be 'predicted' or 'best', got {pick!r}")
    sam.eval()
    embed = embed or (lambda images: sam.image_encoder(to_model_input(images)))
    rng, ious = np.random.default_rng(seed), []
    for first in range(0, len(pool.images), batch_size):
        images, masks = pool.images[first : first + batch_size], pool.masks[first : first + batch_size]
        logits, iou_pred = prompted_masks(sam, embed(images), masks, "point", rng)
        iou = _iou(logits, torch.from_numpy(masks))
        ious.append(iou.max(dim=1).values if pick == "best" else iou.gather(1, iou_pred.argmax(dim=1)[:, None])[:, 0])
    return 100.0 * float(torch.cat(ious).mean())


def pretrain_sam(
    image_size: int,
    embed_dim: int,
    depth: int,
    mlp_dim: int,
    num_heads: int,
    output: str,
    *,
    steps: int = 8000,
    batch_size: int = 64,
    num_images: int = 32768,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    warmup: int = 50,
    seed: int = 0,
    log_period: int = 100,
    eval_images: int = 300,
    eval_period: int = 0,
    report_path: Optional[str] = None,
) -> Dict:
    """Trains a tiny SAM (see :func:`build_sam`) class-agnostically and saves its state dict to ``output``.

    Each step encodes ``batch_size`` images once and prompts one object of each, a quarter of the batch per kind
    of prompt in PROMPT_KINDS (the number of steps: docs/laboratory.md, "Stage 2"). With ``eval_period``, the
    single-point IoU is also measured every ``eval_period`` steps (the learning curve). Returns (and, with
    ``report_path``, writes as JSON) the settings, the losses, and the single-point IoU of the trained and of the
    untrained model on held-out objects (see :func:`~esc_net.pretrain.common.finish_stage`).

    Raises:
        ValueError: settings that cannot train (see :meth:`Schedule.check`), before any work.
        FloatingPointError: the loss diverged; nothing is saved.
    """
    schedule = Schedule(steps, batch_size, lr, weight_decay, warmup)
    schedule.check(num_images, eval_period, eval_images)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    started = (time.perf_counter(), provenance())  # what ran, as it started
    sam = build_sam(image_size, embed_dim, depth, mlp_dim, num_heads)
    pool = RenderedPool(lambda index: object_example(seed, "sam", index, image_size), num_images)
    held_out = render_objects(seed, "sam_eval", eval_images, image_size)
    untrained = single_point_iou(sam, held_out, seed)

    def step_loss(index: np.ndarray) -> torch.Tensor:
        images, masks = random_dihedral(*pool.take(index), rng)
        embeddings = sam.image_encoder(to_model_input(images))
        loss = 0.0
        for kind, part in zip(PROMPT_KINDS, np.array_split(np.arange(len(index)), len(PROMPT_KINDS))):
            logits, iou_pred = prompted_masks(sam, embeddings[part], masks[part], kind, rng)
            target = torch.from_numpy(masks[part]).float()
            # the best of the candidates for an ambiguous prompt, as SAM trains its multi-mask output
            mask_loss = _mask_losses(logits, target).min(dim=1).values.mean()
            iou_loss = F.mse_loss(iou_pred, _iou(logits.detach(), target))
            loss = loss + (mask_loss + iou_loss) * len(part) / len(index)
        return loss

    curve = []

    def after_step(done: int) -> None:
        if eval_period and done % eval_period == 0 and done < steps:
            curve.append({"step": done, "single_point_iou": single_point_iou(sam, held_out, seed)})
            logger.info("SAM single-point IoU at step %d: %.1f", done, curve[-1]["single_point_iou"])
            sam.train()

    losses = fit(sam, schedule, num_images, rng, step_loss, "sam", log_period, after_step)
    trained = single_point_iou(sam, held_out, seed)
    settings = {**schedule._asdict(), "num_images": num_images, "seed": seed, "image_size": image_size}
    settings["decoder"] = {"embed_dim": embed_dim, "depth": depth, "mlp_dim": mlp_dim, "num_heads": num_heads}
    results = {"single_point_iou": trained, "single_point_iou_untrained": untrained, "learning_curve": curve}
    results["held_out_objects"] = eval_images
    report = finish_stage(sam.state_dict(), output, {"settings": settings, **results}, losses, log_period, started)
    logger.info("SAM single-point IoU on %d held-out objects: %.1f (untrained: %.1f)", eval_images, trained, untrained)
    if report_path:
        save_report(report, report_path)
    return report
