"""Config options of ESC-Net (``cfg.MODEL.ESC_NET``) and of its trainer.

One place per setting: this file holds the default of every key that ESC-Net adds (the ViT-B/16 model of the
paper), with what it means; ``configs/Base-ESCNet.yaml`` sets the Detectron2 keys whose values ESC-Net changes; the
other YAML files hold only what differs from those. Defaults are the paper's where it states them (N_o = 5 points,
N = 4 ESC-Blocks, LR multiplier 0.01 for CLIP and SAM) and the documented choices of this codebase elsewhere; the
comments say which is which (their history is in docs/method_notes.md).

Each module reads its own keys (its ``from_config``) and checks the values it reads, naming the key; the
LazyConfig files start from the same reading (``ESCNet.lazy_call``). A new setting is a default here and an
argument of the module that reads it.

Image geometry has one source, ``MODEL.ESC_NET.CLIP_IMAGE_SIZE``: training crops must be that size (the dataset
mapper checks it), images smaller than a crop are padded to it, and the sliding windows default to it. Pixel
normalisation has one source too, the backbone's own statistics (``CLIPEncoder.pixel_mean/pixel_std``);
Detectron2's ``MODEL.PIXEL_MEAN``/``PIXEL_STD`` are not read.

Config files are read by :func:`merge_config_file`, with YAML's safe loader only (see there).
"""

import argparse
from typing import Sequence

import yaml
from detectron2.config import CfgNode as CN

__all__ = [
    "ConfigFileError",
    "add_esc_net_config",
    "add_opts_argument",
    "error_text",
    "load_config",
    "merge_config_file",
]


class ConfigFileError(ValueError):
    """A config file or override that cannot be merged: unsafe, not YAML, or not fitting the config. The message
    names it, in one line."""


def merge_config_file(cfg: CN, path: str) -> None:
    """``cfg.merge_from_file(path)`` with YAML's safe loader for the file and every file of its ``_BASE_`` chain.

    Detectron2's ``merge_from_file`` (through fvcore) retries a file that ``yaml.safe_load`` refuses with
    ``yaml.unsafe_load``, which constructs whatever Python object a tag names (``!!python/object/apply:os.system``
    runs a command). With ``allow_unsafe=False`` fvcore passes the refusal on instead, for the bases too; it is
    reported here naming the file and the tag. ESC-Net's configs hold only plain values (numbers, strings, lists,
    mappings), so no config needs more.

    Raises:
        ConfigFileError: the file is a LazyConfig (``.py``), or the file or a base asks for a Python object, is
            not valid YAML or not a mapping, its ``_BASE_`` chain is missing a file or loops, or a key or value does
            not fit ``cfg`` (yacs's message). The message is one line.
    """
    if path.endswith(".py"):
        # fvcore would read the Python code as YAML, failing with "'str' object has no attribute 'items'" or so.
        raise ConfigFileError(
            f"{path} is a LazyConfig (Python) file, and this command reads YAML configs: give a YAML config "
            "(configs/*.yaml; configs/<name>.py and configs/<name>.yaml build the same model), or train a LazyConfig "
            "with Detectron2's tools/lazyconfig_train_net.py"
        )
    try:
        cfg.merge_from_file(path, allow_unsafe=False)
    except yaml.constructor.ConstructorError as e:
        # The problem mark names the file of the chain that holds the tag and where; the problem names the tag.
        mark = e.problem_mark
        where = f"{mark.name}, line {mark.line + 1}" if mark is not None else path
        raise ConfigFileError(
            f"refusing the config {where}: {e.problem}; a config holds only plain values (numbers, strings, lists, "
            "mappings), and a tag that constructs a Python object could run code"
        ) from e
    except yaml.YAMLError as e:
        # PyYAML's message puts the place of the error on lines of their own
        raise ConfigFileError(
            f"the config {path} (or a file of its _BASE_ chain) is not valid YAML: {' '.join(str(e).split())}"
        ) from e
    except RecursionError as e:
        raise ConfigFileError(f"the _BASE_ chain of the config {path} loops (a file is its own base)") from e
    except OSError as e:
        raise ConfigFileError(f"cannot read the config {path} or a file of its _BASE_ chain: {e}") from e
    except (AttributeError, TypeError) as e:
        # fvcore's reading of a file that is empty, a list or plain text, or whose _BASE_ is not a file name
        raise ConfigFileError(
            f"bad config {path}: a config file, and each file of its _BASE_ chain, is a mapping of KEY: value lines "
            f"whose _BASE_ names a YAML file; this one is not ({type(e).__name__}: {e})"
        ) from e
    except (AssertionError, KeyError, ValueError) as e:
        # yacs reports an unknown key or a value of the wrong type with these
        raise ConfigFileError(f"bad config {path}: {error_text(e)}") from e


def error_text(error: BaseException) -> str:
    """An exception's message for a user: str(KeyError("x")) is "'x'" (quoted), its argument the readable one."""
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def add_esc_net_config(cfg: CN) -> None:
    """Adds ESC-Net's options to a Detectron2 config, in place, and registers the ``ESCNet`` meta-architecture and
    its backbones (a config that names it is built through this function; importing ``esc_net`` alone stays
    light)."""
    import esc_net.modeling  # noqa: F401  (registers ESCNet in META_ARCH_REGISTRY, CLIPEncoder in VL_BACKBONE_REGISTRY)

    cfg.MODEL.ESC_NET = CN()
    m = cfg.MODEL.ESC_NET

    # --- the vision-language backbone ----------------------------------------------------------------------
    # A class of esc_net.modeling.VL_BACKBONE_REGISTRY (a VisionLanguageBackbone, esc_net/modeling/backbone.py).
    # "CLIPEncoder" is open_clip's CLIP, configured by the CLIP_* keys and the prompt keys below.
    m.BACKBONE = "CLIPEncoder"

    # --- CLIP (open_clip) ---------------------------------------------------------------------------------
    m.CLIP_MODEL_NAME = "ViT-B-16"
    # An open_clip pretrained tag ("openai"), a local weights file (.bin/.pt/.safetensors) or "none". Read only when
    # MODEL.WEIGHTS is empty (a checkpoint of the whole model holds CLIP's tensors); a tag's activation (OpenAI's
    # QuickGELU) and image statistics apply either way.
    m.CLIP_PRETRAINED = "openai"
    # An open_clip model config (embed_dim, vision_cfg, text_cfg; custom_text: True for a SigLIP-style text tower)
    # that replaces the named model; empty = unused. Lets a config define a small CLIP of its own (see
    # configs/esc_net_tiny.yaml).
    m.CLIP_MODEL_CFG = CN(new_allowed=True)
    # Square CLIP input size; the grid is CLIP_IMAGE_SIZE / patch size (384 / 16 = 24 for ViT-B/16). Also the side
    # of the training crops (INPUT.CROP.SIZE must match) and of the sliding windows by default.
    m.CLIP_IMAGE_SIZE = 384
    # "attention": only the q and v projection weights of CLIP's attention layers train, as in CAT-Seg (the paper
    # fine-tunes attention; k stays frozen); "attention_with_bias" also trains their biases; "full" or "frozen"
    # otherwise.
    m.CLIP_FINETUNE = "attention"
    # How the last CLIP image block makes the dense features: "value" (CAT-Seg's dense last layer, on which ESC-Net
    # builds: each position through the value and output projections only, the class token's input as the
    # residual, then the MLP) or "attention" (the block as CLIP runs it, global attention). See
    # esc_net/modeling/clip/encoder.py; the laboratory's A/B row is in docs/laboratory.md.
    m.CLIP_DENSE_LAYER = "value"
    # 0-based indices of CLIP image blocks whose outputs feed the decoder's skip connections, in the order of the
    # decoder's stages: block 3 joins the first upsampling (48x48), block 7 the second (96x96), as in CAT-Seg.
    m.CLIP_SKIP_LAYERS = [3, 7]
    m.PROMPT_TEMPLATES = ["A photo of a {} in the scene."]
    # How a class name holding synonyms ("sofa, couch") becomes a prompt: "first" or "average".
    m.SYNONYM_MODE = "first"

    # --- Pseudo Prompt Generator ------------------------------------------------------------------------------
    m.NUM_POINTS = 5  # N_o, the paper's value
    # Kept pixels have a spatial-softmax probability above THRESHOLD_FACTOR / (h * w), i.e. "above uniform".
    m.PPG_THRESHOLD_FACTOR = 1.0
    m.KMEANS_ITERS = 7
    # The pseudo mask SAM is prompted with, on the kept pixels: "posterior" (the class's probability among the
    # vocabulary's classes at the pixel, so every kept pixel of a present object is positive, those of an absent
    # class negative), "region" (each K-means region relative to its own peak, all kept pixels positive) or "peak"
    # (relative to the map's single maximum: only the strongest peak positive). See
    # esc_net/modeling/prompt_generator.py.
    m.PSEUDO_MASK = "posterior"

    # --- SAM block (segment_anything's PromptEncoder + TwoWayTransformer) -------------------------------------
    # Path of an official SAM checkpoint (e.g. sam_vit_b_01ec64.pth). Training refuses to start without one (the
    # paper's ablation shows that pre-trained SAM is essential) unless ALLOW_RANDOM_SAM is set or MODEL.WEIGHTS
    # provides the SAM weights; inference takes them from MODEL.WEIGHTS and needs no SAM file.
    m.SAM_CHECKPOINT = ""
    # Train with randomly initialised SAM blocks: the tiny test configs, and the "random SAM" ablation.
    m.ALLOW_RANDOM_SAM = False
    # Ablation: False drops the pseudo prompts and the SAM block; the VLF block is then guided by the plain CLIP
    # features (the paper's "w/o SAM" row).
    m.USE_SAM_BLOCK = True
    # Ablation: what SAM is prompted with, a non-empty subset of "points", "boxes" (the box around the kept
    # pixels) and "mask" (the filtered probability map). The paper's choice is points + mask; boxes hurt there.
    m.PROMPT_TYPES = ["points", "mask"]
    # The SAM block's projection of CLIP's dense features into SAM's image-embedding space: "linear" (a 1x1 conv,
    # the paper's reading), "mlp" (two 1x1 convs with a GELU between them) or "conv" (a 3x3 conv, a GELU, a 1x1
    # conv); see esc_net/modeling/sam_projection.py.
    m.SAM_IMAGE_PROJECTION = "linear"
    # The aligned projection (`esc-net-pretrain align` fits it to SAM's own image embedding of training images),
    # loaded into every SAM block when the model is built without MODEL.WEIGHTS; "" keeps the random initialisation.
    m.SAM_PROJECTION_WEIGHTS = ""
    # Weight of the alignment term of the training loss: the mean squared difference between each SAM block's
    # projection of F_v and the aligned projection's (SAM_PROJECTION_WEIGHTS), which keeps the projection in SAM's
    # embedding space while ESC-Net trains. 0 = none (the paper's reading).
    m.SAM_ALIGN_LOSS_WEIGHT = 0.0
    m.SAM_EMBED_DIM = 256  # SAM ViT-B mask decoder sizes, so that its weights load
    m.SAM_DEPTH = 2
    m.SAM_MLP_DIM = 2048
    m.SAM_NUM_HEADS = 8

    # --- ESC-Blocks and the Vision-Language Fusion block -------------------------------------------------------
    m.NUM_BLOCKS = 4  # the paper's N
    m.HIDDEN_DIM = 128
    m.NUM_HEADS = 4
    m.WINDOW_SIZE = 12
    # Swin blocks in each VLF block's image guidance; regular and shifted windows alternate through the stack.
    # One per ESC-Block gives the four blocks together the spatial attention of CAT-Seg's two aggregator layers
    # (two Swin blocks each), the reading under which the paper's FLOPs (2,203.5 G against CAT-Seg's 2,121.1)
    # add up; 2 is the heavier reading (docs/performance.md).
    m.SWIN_DEPTH = 1
    m.TEXT_GUIDANCE_DIM = 128
    # Where the ESC-Blocks read each class's text embedding: "sam" (the SAM block's text token, beside the class's
    # point tokens) and "vlf" (the text guidance of the VLF block's class attention), the paper's reading. A part
    # left out reads a learnt token that is the same for every class in its place, so that the blocks tell the
    # classes apart only by their correlation maps and pseudo prompts: what they learn cannot be tied to the names
    # of the training vocabulary (the laboratory's A/B rows: docs/laboratory.md, "Text guidance").
    m.TEXT_GUIDANCE = ["sam", "vlf"]
    # Vocabularies smaller than this are padded to this many tokens in the class attention with a learnt padding
    # token, as CAT-Seg pads to 256, so that a class attends over as many tokens at test (PAS-20: 20 classes) as in
    # training (171); 0 = no padding (the attention averages over the N classes, whatever N is). Must exceed the
    # training vocabulary. See esc_net/modeling/vlf_block.py (TextGuidance).
    m.CLASS_ATTENTION_PAD = 0

    # --- decoder and loss ---------------------------------------------------------------------------------------
    # Channels after the first and second 2x upsampling (24 -> 48 -> 96 for a 24x24 grid).
    m.DECODER_DIMS = [64, 32]
    # Channels the CLIP skip features are projected to before they join the decoder.
    m.DECODER_GUIDANCE_DIMS = [32, 16]
    # "bce": per-pixel binary cross-entropy on one-hot targets; "ce": softmax cross-entropy over classes.
    m.LOSS = "bce"
    # Weight of the same loss on every ESC-Block's refined correlation map (deep supervision, computed at the
    # decoder's output resolution). The paper states none: with the mask prompt the loss reaches every map head
    # through the (differentiable) pseudo mask. Without it (PROMPT_TYPES of points and boxes only) the maps that
    # later blocks draw prompts from learn only through this, so it must be > 0 then. The laboratory's A/B row is
    # in docs/laboratory.md.
    m.BLOCK_LOSS_WEIGHT = 0.0
    m.IGNORE_VALUE = 255
    # Pictures of the pseudo prompts during training use Detectron2's own VIS_PERIOD (default 0 = off): every
    # VIS_PERIOD iterations, one image per ESC-Block goes to TensorBoard as "pseudo_prompts/block<i>" (the first
    # image of the batch, its most frequent class; see esc_net/utils/prompt_vis.py).

    # --- inference ------------------------------------------------------------------------------------------
    # "sliding": resize to SLIDING_RESIZE, CLIP_IMAGE_SIZE windows overlapping by SLIDING_OVERLAP, plus one global
    # view, sigmoid scores averaged; "whole": one global view.
    m.INFERENCE_MODE = "sliding"
    m.SLIDING_RESIZE = 640
    # Window side in pixels of the resized image (0 = CLIP_IMAGE_SIZE). Every window is resized to the CLIP
    # input, so the ViT-L/14 config (384 here) reads the same five views of a 640 image as ViT-B/16 at 384, the
    # protocol of CAT-Seg's evaluation.
    m.SLIDING_WINDOW = 0
    m.SLIDING_OVERLAP = 1.0 / 3.0
    # The class-count protocol: a view with more classes than this refines only its K classes of highest CLIP
    # correlation; the others keep their plain correlation, ranked below every refined class. 0 = no cap.
    # The default is the training vocabulary's size (COCO-Stuff, 171), so that the class attention of the paper
    # benchmarks never averages over more classes than in training, and A-847/PC-459 cost what 171 classes
    # cost (docs/method_notes.md). Training refuses a vocabulary larger than the cap.
    m.MAX_CLASSES_PER_VIEW = 171
    # What inference returns per image: "scores", per-class scores [N, H, W] at the image's size (N x H x W
    # floats, which grow with the image and the vocabulary), or "labels", the label map [H, W] (and, with
    # INFERENCE_TOP_K > 0, the k best classes and their scores per pixel), upsampled in tiles and class chunks
    # in bounded memory. The evaluator takes either.
    m.INFERENCE_OUTPUT = "scores"
    m.INFERENCE_TOP_K = 0
    # The class names an input is scored against when it carries no "vocabulary" of its own (Detectron2's
    # DefaultPredictor, stock DatasetMapper and other tools give none): a list of names (synonyms after commas,
    # ["cat", "sofa, couch"]) or the name of a registered dataset (its "vocabulary" metadata, else
    # "stuff_classes"). None = the first DATASETS.TEST dataset's (no default if DATASETS.TEST is empty).
    # The model takes names: a dataset is read where the config is read, by esc_net.data.resolve_vocabularies
    # (train_net.py and ESCNetPredictor call it; call it before Detectron2's own tools build the model), which
    # writes the names here. None accepts a list or a string; once merged, yacs keeps that type.
    m.VOCABULARY = None
    # The same for training inputs without a vocabulary (Detectron2's stock DatasetMapper): the names their label
    # ids index. None = DATASETS.TRAIN's (one vocabulary shared by all of them).
    m.TRAIN_VOCABULARY = None

    # --- speed and memory only: no score depends on these beyond float rounding ------------------------------
    # "fast": the ESC-Blocks and the decoder run their forward_fast (the image side once per image, SAM's cross
    # attentions reassociated, classes in chunks, channels-last); "reference": their forward_reference, the plain
    # forms (the paper's order on all classes at once, segment_anything's TwoWayTransformer call). The same
    # function; change the reference first, and the equivalence tests (tests/test_esc_block.py,
    # tests/test_decoder.py, tests/test_model.py) tell how the fast path must follow.
    m.IMPLEMENTATION = "fast"
    # Classes that go through the per-class stages (prompts, SAM, Swin, decoder) at a time on the CPU; 0 = all at
    # once (always on GPUs, where chunks only add kernel launches; see esc_net/modeling/class_chunks.py). Lets the
    # allocator reuse memory between chunks; scores do not depend on it beyond float rounding.
    m.CLASS_CHUNK = 16
    # Views (sliding windows, global view, images of a batch) are refined in passes of at most
    # max(1, VIEW_CLASSES_PER_PASS // N) views (N capped by MAX_CLASSES_PER_VIEW). Activation memory grows with
    # views x classes; the passes bound it without changing any score (views are independent). 0 = one pass.
    m.VIEW_CLASSES_PER_PASS = 1024
    # Training only: recompute each ESC-Block's and the decoder's activations in the backward pass instead of
    # keeping them (torch.utils.checkpoint). Activation memory grows with images x classes; this trades memory
    # for time (benchmarks/benchmark_train_step.py measures both; docs/performance.md).
    m.ACTIVATION_CHECKPOINTING = False

    # --- solver ---------------------------------------------------------------------------------------------
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # LR multipliers of the pre-trained parts (the paper: 2e-6 against 2e-4 for new modules).
    cfg.SOLVER.CLIP_MULTIPLIER = 0.01
    cfg.SOLVER.SAM_MULTIPLIER = 0.01
    # Detectron2's SOLVER.CLIP_GRADIENTS.CLIP_TYPE gains "full_model": one norm over all parameters, clipped to
    # CLIP_VALUE (Base-ESCNet.yaml selects it).

    # Detectron2's SOLVER.AMP.ENABLED trains under autocast in float16 with a gradient scaler; "bfloat16" has
    # float32's range (no overflow) and is the usual choice on A100/H100 GPUs.
    cfg.SOLVER.AMP.PRECISION = "float16"

    # --- data -----------------------------------------------------------------------------------------------
    # SSD's photometric augmentation (brightness, contrast, saturation, hue), Detectron2's ColorAugSSDTransform.
    cfg.INPUT.COLOR_AUG_SSD = True
    # Training crops are re-drawn (up to 10 times) while one class covers more than this fraction; 1.0 = off.
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # A dataset with images without label maps (or label maps without images) is refused, the files named.
    # True uses only its complete pairs (with a warning naming the others); the evaluation reports how many images
    # it scored (esc_net/data/datasets/complete_sem_seg.py).
    cfg.DATASETS.ALLOW_INCOMPLETE = False


def add_opts_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--opts KEY VALUE ...`` argument of the project's commands: config overrides, after every other
    argument (Detectron2's ``merge_from_list`` takes them)."""
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="KEY VALUE",
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth; comes last",
    )


def load_config(config_file: str, opts: Sequence[str] = ()) -> CN:
    """Detectron2's config with ESC-Net's options, merged from ``config_file`` (and its ``_BASE_`` chain) and the
    overrides ``opts`` (key, value, ...).

    Raises:
        ConfigFileError: the file is refused (:func:`merge_config_file`), or an override is (an unknown key, a
            value of the wrong type, a key without a value); the message names which.
    """
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_esc_net_config(cfg)
    merge_config_file(cfg, config_file)
    try:
        cfg.merge_from_list(list(opts))
    except (AssertionError, KeyError, ValueError) as e:
        raise ConfigFileError(f"bad config overrides {list(opts)} of the config {config_file}: {error_text(e)}") from e
    return cfg
