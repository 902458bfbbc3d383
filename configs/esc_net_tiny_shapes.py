"""The embedded default as a Detectron2 LazyConfig: the tiny ESC-Net of esc_net_tiny_shapes.yaml (same
parameters, names and shapes), from the model zoo's pre-trained tiny CLIP, tiny SAM and aligned SAM projection
(docs/model_zoo.md), trained on the seen classes of the Synthetic Shapes world, on a CPU:

    python tools/lazyconfig_train_net.py --config-file configs/esc_net_tiny_shapes.py

(Detectron2's script, in ``tools/`` of a Detectron2 checkout.) It changes esc_net_vitb_384.py where the YAML
configs differ; like it, it is Python code that runs when loaded.
"""

from detectron2.config import LazyCall as L
from detectron2.projects.point_rend import ColorAugSSDTransform

from esc_net.modeling.sam_projection import ProjectionAnchor, read_projection_weights

from .esc_net_vitb_384 import dataloader, lr_multiplier, model, optimizer, train

PROJECTION = "model_zoo/sam_projection_tiny_shapes.pth"

# a CLIP of a few million parameters and a small SAM transformer, both pre-trained by esc-net-pretrain; two ESC-Blocks
model.clip.update(
    model_name="tiny-clip",
    pretrained="model_zoo/clip_tiny_shapes.pt",
    model_cfg=dict(
        embed_dim=32,
        vision_cfg=dict(image_size=64, layers=4, width=64, patch_size=8, head_width=32),
        text_cfg=dict(context_length=32, vocab_size=49408, width=64, heads=2, layers=2),
    ),
    image_size=64,
    skip_layers=[1, 2],
    templates=["a photo of a {}."],  # the form of the captions the CLIP was pre-trained on
)
model.blocks.update(
    num_blocks=2,
    clip_dim=32,
    grid_size=(8, 8),
    num_points=3,
    sam_embed_dim=32,
    sam_depth=2,
    sam_mlp_dim=64,
    sam_num_heads=2,
    hidden_dim=32,
    num_heads=2,
    window_size=4,
    text_guidance_dim=16,
    sam_checkpoint="model_zoo/sam_tiny_shapes.pth",
    # the aligned 3x3-conv projection into SAM's image space, kept there by the alignment term (as the YAML config)
    image_projection="conv",
    sam_projection_weights=PROJECTION,
)
model.projection_anchor = L(ProjectionAnchor)(state=L(read_projection_weights)(path=PROJECTION))
model.align_loss_weight = 1.0
model.decoder.update(clip_width=64, decoder_dims=[32, 16], guidance_dims=[16, 8])
model.inference.update(mode="whole", out_size=32, sliding_resize=96)
model.loss = "ce"  # the seen classes reached 48.0 mIoU against 31.9 with BCE (docs/laboratory.md)

dataloader.train.dataset.names = "synthetic_shapes_train"
dataloader.train.mapper.augmentations[0].update(short_edge_length=[64], max_size=256)
# no SSD colour augmentation: the world's classes are named by their hue, which its hue jitter changes
dataloader.train.mapper.augmentations = [
    a for a in dataloader.train.mapper.augmentations if a._target_ is not ColorAugSSDTransform
]
dataloader.train.num_workers = 0
dataloader.test.dataset.names = "synthetic_shapes_val"
dataloader.test.num_workers = 0

optimizer.lr = 0.001
optimizer.max_norm = 1.0

train.update(output_dir="output/esc_net_tiny_shapes_lazy", max_iter=1000, device="cpu", seed=0)
train.checkpointer.period = 250
