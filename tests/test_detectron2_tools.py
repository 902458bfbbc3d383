"""ESC-Net in Detectron2's own tools, used as a Detectron2 user would: a dataset registered with ``stuff_classes``
only, named in DATASETS.TEST / TRAIN, and inputs that carry no vocabulary (the model takes its default, the names
esc_net.data.resolve_vocabularies reads into the config from the datasets it names). One test per tool:
DefaultPredictor, the stock DatasetMapper + test loader + inference_on_dataset + SemSegEvaluator,
Visualizer.draw_sem_seg, and a DefaultTrainer subclass of the user's own that trains with the stock mapper."""

import functools
import json
import os

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, build_detection_test_loader, detection_utils
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor, DefaultTrainer
from detectron2.evaluation import SemSegEvaluator, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.utils.visualizer import Visualizer

from conftest import tiny_cfg
from esc_net.data import resolve_vocabularies
from esc_net.data import synthetic_shapes as ss
from esc_net.engine import Trainer
from esc_net.evaluation import OpenVocabSemSegEvaluator
from esc_net.solver import build_optimizer

TRAIN, VAL = "d2_tools_shapes_train", "d2_tools_shapes_val"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A small synthetic-shapes dataset registered under new names with ``stuff_classes`` (no ``vocabulary``
    metadata), as a user registers a dataset of their own."""
    root = str(tmp_path_factory.mktemp("datasets"))
    ss.generate_synthetic_shapes(root=root, num_train=8, num_val=6)
    for name, split in ((TRAIN, "train"), (VAL, "val")):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, functools.partial(ss.load_synthetic_shapes, split, root))
        MetadataCatalog.get(name).set(
            stuff_classes=list(ss.SEEN_CLASSES),
            stuff_colors=[ss.class_color(n) for n in ss.SEEN_CLASSES],
            ignore_label=ss.IGNORE_LABEL,
        )
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny model (seed 0) saved by Detectron2's checkpointer, and the path of its checkpoint."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg("MODEL.ESC_NET.LOSS", "ce")).eval()
    folder = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(model, save_dir=str(folder)).save("model")
    return model, str(folder / "model.pth")


def _cfg(weights, *opts):
    """The config a Detectron2 user builds, with the names of its datasets read into it (the model reads no
    catalog)."""
    cfg = tiny_cfg("DATASETS.TRAIN", (TRAIN,), "DATASETS.TEST", (VAL,), "MODEL.WEIGHTS", weights[1], *opts)
    return resolve_vocabularies(cfg)


def _image_bgr(shapes, index=0):
    return detection_utils.read_image(DatasetCatalog.get(VAL)[index]["file_name"], format="BGR")


def test_default_predictor(shapes, weights):
    """DefaultPredictor builds the model, loads MODEL.WEIGHTS and scores DATASETS.TEST[0]'s classes."""
    cfg = _cfg(weights)
    predictor = DefaultPredictor(cfg)
    image = _image_bgr(shapes)
    scores = predictor(image)["sem_seg"]
    assert scores.shape == (len(ss.SEEN_CLASSES), *image.shape[:2])
    # What DefaultPredictor feeds the model (RGB, resized by INPUT.MIN_SIZE_TEST), given to the saved model with
    # the dataset's names: the same scores, so the weights were loaded and the default vocabulary is the dataset's.
    resized = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST).get_transform(image)
    rgb = resized.apply_image(image[:, :, ::-1])
    request = {
        "image": torch.as_tensor(rgb.transpose(2, 0, 1).copy()),
        "height": image.shape[0],
        "width": image.shape[1],
        "vocabulary": ss.SEEN_CLASSES,
    }
    with torch.no_grad():
        expected = weights[0]([request])[0]["sem_seg"]
    torch.testing.assert_close(scores, expected)


def _miou(model, loader, evaluator):
    return inference_on_dataset(model, loader, evaluator)["sem_seg"]["mIoU"]


def test_stock_mapper_loader_and_sem_seg_evaluator(shapes, weights):
    """Detectron2's DatasetMapper (images resized by INPUT.MIN_SIZE_TEST), test loader, inference_on_dataset and
    SemSegEvaluator give the mIoU of the project's own mapper and evaluator."""
    cfg = _cfg(weights)
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    stock_loader = build_detection_test_loader(cfg, VAL, mapper=DatasetMapper(cfg, is_train=False))
    assert next(iter(stock_loader))[0]["image"].shape[-2:] == (cfg.INPUT.MIN_SIZE_TEST,) * 2  # 96 -> 800
    stock = _miou(model, stock_loader, SemSegEvaluator(VAL, distributed=False))
    project = _miou(model, Trainer.build_test_loader(cfg, VAL), OpenVocabSemSegEvaluator(VAL, distributed=False))
    # With these random weights many pixels sit near a tie, and the resampled input flips some of them; on the
    # trained embedded default of version 2 the two agreed to 0.01 (41.15 and 41.14, CHANGELOG.md).
    assert stock == pytest.approx(project, abs=0.5)
    # Without the resize both see the same pixels, and Detectron2's evaluator counts as the project's does.
    unresized = build_detection_test_loader(
        cfg, VAL, mapper=DatasetMapper(cfg, is_train=False, augmentations=[], image_format=cfg.INPUT.FORMAT)
    )
    assert _miou(model, unresized, SemSegEvaluator(VAL, distributed=False)) == pytest.approx(project, abs=1e-9)


def test_visualizer_draws_the_output(shapes, weights):
    """Detectron2's Visualizer draws the predicted label map with the dataset's metadata, as its demo does."""
    cfg = _cfg(weights)
    image = _image_bgr(shapes)
    labels = DefaultPredictor(cfg)(image)["sem_seg"].argmax(dim=0).cpu()
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    drawn = Visualizer(image[:, :, ::-1], metadata).draw_sem_seg(labels).get_image()
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    # Each large label's segment is tinted towards its class colour (where that colour differs from the segment's
    # own; in a small segment, the class name written over it dominates).
    tinted = 0
    for label in labels.unique().tolist():
        mask = (labels == label).numpy()
        if mask.mean() < 0.1:
            continue
        shift = drawn[mask].astype(float).mean(0) - image[:, :, ::-1][mask].astype(float).mean(0)
        towards = np.array(metadata.stuff_colors[label], float) - image[:, :, ::-1][mask].astype(float).mean(0)
        if np.linalg.norm(towards) > 30:
            assert shift @ towards > 0, f"class {label} is not drawn in its colour"
            tinted += 1
    assert tinted


class UsersTrainer(DefaultTrainer):
    """A user's own trainer: Detectron2's DefaultTrainer with its stock data loaders (DatasetMapper), Detectron2's
    SemSegEvaluator, and ESC-Net's optimizer (the LR multipliers of CLIP and SAM and the full-model gradient
    clipping that Detectron2's SGD builder does not know)."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        return SemSegEvaluator(dataset_name, distributed=False, output_dir=cfg.OUTPUT_DIR)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)


@pytest.mark.slow
def test_default_trainer_subclass_trains_with_the_stock_mapper(shapes, tmp_path):
    """Training labels are ids into DATASETS.TRAIN's classes, which the model takes as its training vocabulary."""
    cfg = tiny_cfg(
        "DATASETS.TRAIN",
        (TRAIN,),
        "DATASETS.TEST",
        (VAL,),
        "OUTPUT_DIR",
        str(tmp_path),
        "SOLVER.MAX_ITER",
        3,
        "SOLVER.IMS_PER_BATCH",
        2,
        "MODEL.ESC_NET.LOSS",
        "ce",
        "SEED",
        0,
    )
    trainer = UsersTrainer(resolve_vocabularies(cfg))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.resume_or_load(resume=False)
    trainer.train()
    with open(tmp_path / "metrics.json") as f:
        rows = [json.loads(line) for line in f if "total_loss" in line]
    assert rows and all(np.isfinite(r["total_loss"]) for r in rows)
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("decoder.") for k in changed) and any(k.startswith("clip.") for k in changed)
    results = UsersTrainer.test(cfg, trainer.model)
    assert 0 <= results["sem_seg"]["mIoU"] <= 100
    assert os.path.isfile(tmp_path / "sem_seg_predictions.json")
