"""ESC-Net with CLIP ViT-B/16 at 384x384, as a Detectron2 LazyConfig: the model of esc_net_vitb_384.yaml (same
parameters, names and shapes; tests/test_lazy_config.py checks it), trained on COCO-Stuff-171 and evaluated on
A-847, the first benchmark of the YAML config. Run it with Detectron2's lazy-config training script:

    python tools/lazyconfig_train_net.py --config-file configs/esc_net_vitb_384.py --num-gpus 4 \\
        model.blocks.sam_checkpoint=/path/to/sam_vit_b_01ec64.pth

(``tools/`` of a Detectron2 checkout). The defaults and the reasons for them are documented with the YAML keys in
esc_net/config.py. Unlike the YAML configs, a LazyConfig file is Python code: loading it runs it, so load only
files you trust.
"""

from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.projects.point_rend import ColorAugSSDTransform
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import CosineParamScheduler
from omegaconf import OmegaConf

from esc_net.data import SemanticSegmentationMapper, get_dataset_vocabulary
from esc_net.evaluation import OpenVocabSemSegEvaluator
from esc_net.modeling import CLIPEncoder, CorrelationDecoder, ESCNet, InferenceProtocol, build_esc_blocks
from esc_net.solver import full_model_clipped, lr_factors

model = L(ESCNet)(
    clip=L(CLIPEncoder)(
        model_name="ViT-B-16",
        pretrained="openai",  # an open_clip tag, a local weights file, or "none"
        image_size=384,
        finetune="attention",
        skip_layers=[3, 7],
        templates=["A photo of a {} in the scene."],
        synonym_mode="first",
        dense_layer="value",  # CAT-Seg's dense last layer
    ),
    blocks=L(build_esc_blocks)(
        num_blocks=4,
        deep_supervision=False,  # block_loss_weight > 0
        sam_checkpoint="",  # the official sam_vit_b_01ec64.pth for training
        clip_dim=512,  # ViT-B/16's joint embedding
        hidden_dim=128,
        grid_size=(24, 24),  # 384 / 16
        num_points=5,
        threshold_factor=1.0,
        kmeans_iters=7,
        sam_embed_dim=256,
        sam_depth=2,
        sam_mlp_dim=2048,
        sam_num_heads=8,
        num_heads=4,
        window_size=12,
        text_guidance_dim=128,
        prompt_types=["points", "mask"],
        mask_mode="posterior",
        swin_depth=1,
        class_chunk=16,
        class_pad=0,
    ),
    decoder=L(CorrelationDecoder)(
        hidden_dim="${..blocks.hidden_dim}",
        clip_width=768,  # ViT-B/16's image transformer
        decoder_dims=[64, 32],
        guidance_dims=[32, 16],
        class_chunk="${..blocks.class_chunk}",
    ),
    inference=L(InferenceProtocol)(
        mode="sliding",
        image_size="${..clip.image_size}",
        out_size=96,  # the grid (24) times the decoder's upscale (4)
        sliding_resize=640,
        sliding_window=0,
        sliding_overlap=1.0 / 3.0,
        max_classes_per_view=171,
        view_classes_per_pass=1024,
    ),
    loss="bce",
    block_loss_weight=0.0,
    ignore_value=255,
    input_format="RGB",
    # the names scored for inputs without a "vocabulary": those of the datasets read
    vocabulary=L(get_dataset_vocabulary)(dataset_name="${dataloader.test.dataset.names}"),
    train_vocabulary=L(get_dataset_vocabulary)(dataset_name="${dataloader.train.dataset.names}"),
)

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_stuff_171_train", filter_empty=False),
    mapper=L(SemanticSegmentationMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=[384], max_size=2048, sample_style="choice"),
            L(T.RandomCrop_CategoryAreaConstraint)(
                crop_type="absolute",
                crop_size=["${model.clip.image_size}", "${model.clip.image_size}"],  # the CLIP input
                single_category_max_area=1.0,
                ignored_category="${model.ignore_value}",
            ),
            L(ColorAugSSDTransform)(img_format="${model.input_format}"),
            L(T.RandomFlip)(),
        ],
        image_format="${model.input_format}",
        ignore_label="${model.ignore_value}",
        crop_size="${model.clip.image_size}",
        vocabulary="${model.train_vocabulary}",
    ),
    total_batch_size=4,
    num_workers=4,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="ade20k_847_val", filter_empty=False),
    mapper=L(SemanticSegmentationMapper)(
        is_train=False,
        augmentations=[],  # the model resizes every image to its views
        image_format="${model.input_format}",
        ignore_label="${model.ignore_value}",
        crop_size="${model.clip.image_size}",
        vocabulary="${model.vocabulary}",
    ),
    num_workers=4,
)
dataloader.evaluator = L(OpenVocabSemSegEvaluator)(dataset_name="${..test.dataset.names}")

# AdamW, LR 2e-4 (CLIP and SAM x 0.01), full-model gradient clipping at 0.01; Detectron2's training script sets
# optimizer.params.model.
optimizer = L(full_model_clipped)(
    name="AdamW",
    params=L(get_default_optimizer_params)(
        base_lr="${..lr}",
        weight_decay_norm=0.0,
        lr_factor_func=L(lr_factors)(clip_multiplier=0.01, sam_multiplier=0.01),
    ),
    lr=2e-4,
    weight_decay=1e-4,
    max_norm=0.01,
)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0), warmup_length=0.0, warmup_factor=1.0
)

# The keys Detectron2's tools/lazyconfig_train_net.py reads.
train = dict(
    output_dir="output/esc_net_vitb_384_lazy",
    init_checkpoint="",
    max_iter=80000,
    amp=dict(enabled=False),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=5000, max_to_keep=100),
    eval_period=0,  # evaluate once, after training
    log_period=20,
    device="cuda",
)
