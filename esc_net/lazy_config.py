"""A YAML config in Detectron2's LazyConfig form: the ``model``, ``dataloader``, ``optimizer``, ``lr_multiplier`` and
``train`` that ``tools/lazyconfig_train_net.py`` reads, every value taken from the config (the files in
``configs/*.py`` are one call of :func:`lazy_config` each).

The model is :meth:`ESCNet.lazy_call`: every part with the arguments its ``from_config`` reads, the sizes that follow
from the backbone derived from its arguments. The data and the solver follow the config's keys as train_net.py reads
them; the CLIP input size, the ignore value and the image format are the model's (interpolations), so changing them
on the model changes them everywhere.
"""

from typing import Dict

from detectron2.config import CfgNode
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.projects.point_rend import ColorAugSSDTransform
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler
from omegaconf import DictConfig, OmegaConf

from esc_net.data import SemanticSegmentationMapper, get_dataset_vocabulary
from esc_net.evaluation import OpenVocabSemSegEvaluator
from esc_net.modeling import ESCNet
from esc_net.solver import full_model_clipped, optimizer_params

__all__ = ["lazy_config"]


def lazy_config(cfg: CfgNode) -> Dict[str, DictConfig]:
    """The LazyConfig form of ``cfg`` (a config with ESC-Net's keys, e.g. from :func:`esc_net.config.load_config`):
    ``{"model", "dataloader", "optimizer", "lr_multiplier", "train"}``. It trains on ``DATASETS.TRAIN[0]`` and
    evaluates ``DATASETS.TEST[0]``; the model's default vocabularies are ``MODEL.ESC_NET.VOCABULARY`` and
    ``TRAIN_VOCABULARY`` (names, or a dataset whose names are read when the model is instantiated), else those
    datasets' names."""
    solver = cfg.SOLVER
    m = cfg.MODEL.ESC_NET
    without_vocabularies = cfg.clone()
    without_vocabularies.defrost()
    without_vocabularies.MODEL.ESC_NET.VOCABULARY = without_vocabularies.MODEL.ESC_NET.TRAIN_VOCABULARY = None
    model = ESCNet.lazy_call(without_vocabularies)
    model.vocabulary = _vocabulary(m.VOCABULARY, "${dataloader.test.dataset.names}")
    model.train_vocabulary = _vocabulary(m.TRAIN_VOCABULARY, "${dataloader.train.dataset.names}")

    augmentations = [
        L(T.ResizeShortestEdge)(
            short_edge_length=list(cfg.INPUT.MIN_SIZE_TRAIN),
            max_size=cfg.INPUT.MAX_SIZE_TRAIN,
            sample_style=cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
        ),
        L(T.RandomCrop_CategoryAreaConstraint)(
            crop_type="absolute",
            crop_size=["${model.clip.image_size}", "${model.clip.image_size}"],  # the CLIP input
            single_category_max_area=cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
            ignored_category="${model.ignore_value}",
        ),
    ]
    if cfg.INPUT.COLOR_AUG_SSD:
        augmentations.append(L(ColorAugSSDTransform)(img_format="${model.input_format}"))
    augmentations.append(L(T.RandomFlip)())
    dataloader = OmegaConf.create()
    dataloader.train = L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names=cfg.DATASETS.TRAIN[0], filter_empty=False),
        mapper=L(SemanticSegmentationMapper)(
            is_train=True,
            augmentations=augmentations,
            image_format="${model.input_format}",
            ignore_label="${model.ignore_value}",
            crop_size="${model.clip.image_size}",
            vocabulary="${model.train_vocabulary}",
        ),
        total_batch_size=solver.IMS_PER_BATCH,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    dataloader.test = L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=cfg.DATASETS.TEST[0], filter_empty=False),
        mapper=L(SemanticSegmentationMapper)(
            is_train=False,
            augmentations=[],  # the model resizes every image to its views
            image_format="${model.input_format}",
            ignore_label="${model.ignore_value}",
            crop_size="${model.clip.image_size}",
            vocabulary="${model.vocabulary}",
        ),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    dataloader.evaluator = L(OpenVocabSemSegEvaluator)(dataset_name="${..test.dataset.names}")

    forms = {
        "SOLVER.OPTIMIZER": (solver.OPTIMIZER.upper(), ("ADAMW", "SGD")),
        "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": (solver.CLIP_GRADIENTS.CLIP_TYPE, ("full_model",)),
        "SOLVER.LR_SCHEDULER_NAME": (solver.LR_SCHEDULER_NAME, ("WarmupCosineLR",)),
    }
    for key, (value, supported) in forms.items():
        if value not in supported or not solver.CLIP_GRADIENTS.ENABLED:
            raise ValueError(
                f"{key} {value!r}: the LazyConfig form has {list(supported)} (with SOLVER.CLIP_GRADIENTS.ENABLED); "
                "train this config with train_net.py"
            )
    sgd = dict(momentum=solver.MOMENTUM, nesterov=solver.NESTEROV) if forms["SOLVER.OPTIMIZER"][0] == "SGD" else {}
    # Detectron2's training script sets optimizer.params.model.
    optimizer = L(full_model_clipped)(
        name="SGD" if sgd else "AdamW",
        params=L(optimizer_params)(
            base_lr="${..lr}",
            weight_decay="${..weight_decay}",
            weight_decay_norm=solver.WEIGHT_DECAY_NORM,
            clip_multiplier=solver.CLIP_MULTIPLIER,
            sam_multiplier=solver.SAM_MULTIPLIER,
        ),
        lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        max_norm=solver.CLIP_GRADIENTS.CLIP_VALUE,
        norm_type=solver.CLIP_GRADIENTS.NORM_TYPE,
        **sgd,
    )
    lr_multiplier = L(WarmupParamScheduler)(
        scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
        warmup_length=solver.WARMUP_ITERS / solver.MAX_ITER,
        warmup_factor=solver.WARMUP_FACTOR,
    )
    train = OmegaConf.create(
        dict(
            output_dir=cfg.OUTPUT_DIR + "_lazy",
            init_checkpoint=cfg.MODEL.WEIGHTS,
            max_iter=solver.MAX_ITER,
            amp=dict(enabled=solver.AMP.ENABLED),
            ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
            checkpointer=dict(period=solver.CHECKPOINT_PERIOD, max_to_keep=100),
            eval_period=cfg.TEST.EVAL_PERIOD,  # 0: evaluate once, after training
            log_period=20,
            device=cfg.MODEL.DEVICE,
            seed=cfg.SEED,
        )
    )
    return dict(model=model, dataloader=dataloader, optimizer=optimizer, lr_multiplier=lr_multiplier, train=train)


def _vocabulary(source, dataset: str):
    """The model's default vocabulary: the names ``source`` lists, else those of the dataset it names, else those
    of ``dataset`` (an interpolation), read from the catalog when the model is instantiated."""
    if source and not isinstance(source, str):
        return list(source)
    return L(get_dataset_vocabulary)(dataset_name=source or dataset)
