"""The alignment stage: fit the SAM blocks' image projection to SAM's own image embedding.

ESC-Net never runs SAM's image encoder: each SAM block projects CLIP's dense features into SAM's embedding space
and feeds SAM's pre-trained transformer with the result. Trained by the segmentation loss alone, that projection
never learns what SAM's transformer was trained to read (``benchmarks/benchmark_lab_sam_transfer.py``). This
stage fits it, before ESC-Net's training, to the embedding SAM's own image encoder gives the same images: the one
place where SAM's image encoder runs.

For each batch of training crops (``DATASETS.TRAIN`` through the training mapper, as ESC-Net will see them),
CLIP's dense features F_v [B, D, h, w] come from the config's CLIP (``CLIP_PRETRAINED``, not fine-tuned) and the
target from SAM's image encoder (``SAM_CHECKPOINT``, a whole official-format checkpoint) at its own input size,
averaged onto the CLIP grid (:func:`~esc_net.evaluation.sam_transfer.sam_embedding`). The projection, built as the
config builds it (``SAM_IMAGE_PROJECTION``), is trained to minimise the mean squared error. The same command works
for the laboratory's tiny SAM and for ``sam_vit_b_01ec64.pth`` with COCO-Stuff crops.

The output is the projection's state dict (``torch.save``), which ``MODEL.ESC_NET.SAM_PROJECTION_WEIGHTS`` loads
into every SAM block; the report beside it gives the settings, the loss and the R² on held-out images.
"""

import copy
import itertools
import logging
import time
from typing import Dict, Optional

import numpy as np
import torch
from detectron2.data import DatasetCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from torch.nn import functional as F

from esc_net.data import SemanticSegmentationMapper
from esc_net.data.datasets import incomplete_datasets_allowed
from esc_net.evaluation.sam_transfer import r_squared, sam_embedding
from esc_net.pretrain.common import Schedule, finish_stage, fit, save_report
from esc_net.pretrain.sam import sam_from_checkpoint
from esc_net.utils.provenance import provenance

logger = logging.getLogger("esc_net.pretrain")


def align_projection(
    cfg,
    output: str,
    *,
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 0.01,
    warmup: int = 50,
    seed: int = 0,
    log_period: int = 100,
    eval_images: int = 60,
    report_path: Optional[str] = None,
) -> Dict:
    """Fits the image projection of ``cfg``'s SAM blocks to SAM's image embedding and saves its state dict.

    Args:
        cfg: an ESC-Net config with ``CLIP_PRETRAINED``, ``SAM_CHECKPOINT`` (a whole SAM: its image encoder is
            needed) and ``DATASETS.TRAIN``; its ``DATASETS.TEST[0]`` gives the held-out images of the report.
        output: where the projection's state dict is written.
        steps, batch_size, lr, weight_decay, warmup: AdamW with a linear warm-up then a cosine decay.
        eval_images: held-out images for the R² (at most the test dataset's size).

    Returns (and, with ``report_path``, writes as JSON) the settings, the final loss and the R² of the fitted and
    of the initial projection on the held-out images.
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.IMS_PER_BATCH = batch_size
    cfg.DATALOADER.NUM_WORKERS = 0
    m = cfg.MODEL.ESC_NET
    if not m.SAM_CHECKPOINT:
        raise ValueError("the alignment stage needs MODEL.ESC_NET.SAM_CHECKPOINT: SAM's image embedding is its target")
    if not m.USE_SAM_BLOCK:
        raise ValueError("MODEL.ESC_NET.USE_SAM_BLOCK is False: the model has no SAM block to align")
    schedule = Schedule(steps, batch_size, lr, weight_decay, warmup)
    with incomplete_datasets_allowed(cfg.DATASETS.ALLOW_INCOMPLETE):
        schedule.check(sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TRAIN), 0, eval_images)
    started = (time.perf_counter(), provenance())
    seed_all_rng(seed)
    # the model as ESC-Net's training builds it (CLIP_PRETRAINED, SAM's decoder parts), without aligned weights
    cfg.MODEL.ESC_NET.SAM_PROJECTION_WEIGHTS = ""
    cfg.MODEL.ESC_NET.SAM_ALIGN_LOSS_WEIGHT = 0.0
    model = build_model(cfg).eval()
    sam = sam_from_checkpoint(m.SAM_CHECKPOINT, decoder_heads=m.SAM_NUM_HEADS)
    projection = copy.deepcopy(model.blocks[0].sam.image_proj).train()
    initial = copy.deepcopy(projection).eval()
    grid = model.clip.output_shape().grid_size

    def pair(inputs):
        """(F_v [B, D, h, w], SAM's embedding [B, E, h, w]) of a batch of mapped inputs, at the CLIP input size."""
        images = [x["image"].float() for x in inputs]
        rgb = torch.stack([image.flip(0) if model.input_format == "BGR" else image for image in images])
        rgb = F.interpolate(rgb, size=(model.image_size,) * 2, mode="bilinear", align_corners=False)
        with torch.no_grad():
            features = model.clip.encode_image((rgb - model.pixel_mean) / model.pixel_std)[0].float()
            return features, sam_embedding(sam, rgb, grid)

    with incomplete_datasets_allowed(cfg.DATASETS.ALLOW_INCOMPLETE):
        loader = iter(build_detection_train_loader(cfg, mapper=SemanticSegmentationMapper(cfg, is_train=True)))

    def step_loss(index) -> torch.Tensor:  # the loader draws the batch; ``index`` only counts it
        features, target = pair(next(loader))
        return F.mse_loss(projection(features), target)

    losses = fit(projection, schedule, batch_size, np.random.default_rng(seed), step_loss, "align", log_period)
    projection.eval()
    test_name = cfg.DATASETS.TEST[0]
    with incomplete_datasets_allowed(cfg.DATASETS.ALLOW_INCOMPLETE):
        held_out = build_detection_test_loader(
            cfg, test_name, mapper=SemanticSegmentationMapper(cfg, is_train=False, dataset_name=test_name)
        )
    features, target = map(torch.cat, zip(*(pair(batch) for batch in itertools.islice(held_out, eval_images))))
    with torch.no_grad():
        fitted, untrained = r_squared(projection(features), target), r_squared(initial(features), target)
    settings = {**schedule._asdict(), "seed": seed, "projection": m.SAM_IMAGE_PROJECTION}
    settings.update(train_datasets=list(cfg.DATASETS.TRAIN), clip=m.CLIP_PRETRAINED, sam=m.SAM_CHECKPOINT)
    held = {"dataset": test_name, "images": len(features), "r2": fitted, "r2_initial": untrained}
    report = {"settings": settings, "held_out": held}
    report = finish_stage(projection.state_dict(), output, report, losses, log_period, started)
    logger.info("projection aligned: R² %.3f on %d held-out images (initial %.3f)", fitted, len(features), untrained)
    if report_path:
        save_report(report, report_path)
    return report
