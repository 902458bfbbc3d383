"""End to end: the engine (train_net.py) trains the tiny config on a generated dataset, checkpoints, resumes and
evaluates."""

import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from PIL import Image

from conftest import REPO_ROOT
from esc_net import engine

CLASSES = ["red square", "blue background", "green stripe"]
# the validation images under a second name and a vocabulary of four classes (the labels use the first three)
RENAMED_CLASSES = ["scarlet square", "navy background", "lime stripe", "yellow circle"]


def _make_dataset(root, count, seed):
    """Images of a blue background with a red square and a green stripe; labels 0/1/2, a 255 border."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    dicts = []
    for i in range(count):
        h, w = rng.integers(56, 90, size=2)
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 2] = 200
        label = np.ones((h, w), np.uint8)
        y, x = rng.integers(0, h - 24), rng.integers(0, w - 24)
        image[y : y + 24, x : x + 24] = (220, 30, 30)
        label[y : y + 24, x : x + 24] = 0
        c = rng.integers(0, w - 8)
        image[:, c : c + 8] = (30, 200, 30)
        label[:, c : c + 8] = 2
        label[0] = 255
        image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(root, f"{i}.jpg"))
        Image.fromarray(label).save(os.path.join(root, f"{i}.png"))
        dicts.append(
            {
                "file_name": os.path.join(root, f"{i}.jpg"),
                "sem_seg_file_name": os.path.join(root, f"{i}.png"),
                "height": int(h),
                "width": int(w),
            }
        )
    return dicts


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    for split, count, seed in (("train", 12, 0), ("val", 3, 1)):
        name = f"e2e_toy_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        dicts = _make_dataset(str(root / split), count, seed)
        DatasetCatalog.register(name, lambda d=dicts: d)
        MetadataCatalog.get(name).set(
            stuff_classes=CLASSES, ignore_label=255, evaluator_type="sem_seg", benchmark=f"Toy-{split}"
        )
    if "e2e_toy_val_renamed" in DatasetCatalog.list():
        DatasetCatalog.remove("e2e_toy_val_renamed")
        MetadataCatalog.remove("e2e_toy_val_renamed")
    DatasetCatalog.register("e2e_toy_val_renamed", lambda: DatasetCatalog.get("e2e_toy_val"))
    MetadataCatalog.get("e2e_toy_val_renamed").set(
        stuff_classes=RENAMED_CLASSES, ignore_label=255, evaluator_type="sem_seg", benchmark="Toy-renamed"
    )
    return ("e2e_toy_train",), ("e2e_toy_val",)


def _args(config_opts, eval_only=False, resume=False):
    parser = engine.default_argument_parser()
    argv = ["--config-file", os.path.join(REPO_ROOT, "configs", "esc_net_tiny.yaml")]
    argv += ["--eval-only"] if eval_only else []
    argv += ["--resume"] if resume else []
    return parser.parse_args(argv + [str(x) for x in config_opts])


def _run_opts(datasets, output_dir):
    """The config options of a run on the ``datasets`` fixture's pair, writing to ``output_dir``."""
    train, test = datasets
    return ["DATASETS.TRAIN", str(train), "DATASETS.TEST", str(test), "OUTPUT_DIR", str(output_dir)]


def _losses(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(r["iteration"], r["total_loss"]) for r in rows if "total_loss" in r]


class _ShapeRecorder(DatasetEvaluator):
    """Records, per image, the vocabulary its input carried and the shape of the scores."""

    def reset(self):
        self.shapes = []

    def process(self, inputs, outputs):
        self.shapes += [
            (x["file_name"], tuple(x["vocabulary"]), tuple(o["sem_seg"].shape)) for x, o in zip(inputs, outputs)
        ]

    def evaluate(self):
        return {}


@pytest.mark.slow
def test_train_checkpoint_resume_and_evaluate(datasets, tmp_path):
    test = datasets[1]
    out = str(tmp_path / "run")
    common = [
        *_run_opts(datasets, out),
        "SOLVER.CHECKPOINT_PERIOD",
        20,
        "SOLVER.IMS_PER_BATCH",
        4,
        "SOLVER.BASE_LR",
        0.002,
        "MODEL.ESC_NET.LOSS",  # softmax CE: from a random CLIP it falls within a few dozen steps, BCE does not
        "ce",
        "SEED",
        1,
    ]  # fixed seed: the data order and the initialisation are reproducible
    engine.run(_args(common + ["SOLVER.MAX_ITER", 40]))
    losses = _losses(out)
    assert [it for it, _ in losses][-1] == 39
    assert losses[-1][1] < 0.8 * losses[0][1], f"loss did not decrease: {losses}"
    assert os.path.isfile(os.path.join(out, "model_0000019.pth"))
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    # evaluation at the end of training wrote the benchmark table files
    assert os.path.isfile(os.path.join(out, "benchmark_results.json"))

    # resume: continues from the last checkpoint (iteration 40) to 50 instead of starting again
    engine.run(_args(common + ["SOLVER.MAX_ITER", 50], resume=True))
    iterations = [it for it, _ in _losses(out)]
    assert iterations[-1] == 49 and 19 not in iterations[iterations.index(39) + 1 :]

    # eval-only with the final weights gives the mIoU that the evaluation at the end of training wrote
    with open(os.path.join(out, "benchmark_results.json")) as f:
        after_training = json.load(f)["results"]["e2e_toy_val"]["mIoU"]
    results = engine.run(_args(common + ["MODEL.WEIGHTS", os.path.join(out, "model_final.pth")], eval_only=True))
    assert set(results) == {"e2e_toy_val"}
    assert results["e2e_toy_val"]["sem_seg"]["mIoU"] == pytest.approx(after_training, abs=1e-6)

    # two benchmarks in one call: each image carries its own dataset's vocabulary, scores come at each image's
    # size, and the model is left as it was
    two = common + ["DATASETS.TEST", str(test + ("e2e_toy_val_renamed",))]
    cfg = engine.setup(_args(two))
    model = engine.Trainer.build_model(cfg)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    recorders = [_ShapeRecorder(), _ShapeRecorder()]
    engine.Trainer.test(cfg, model, evaluators=recorders)
    for recorder, names in zip(recorders, (CLASSES, RENAMED_CLASSES)):
        expected = [
            (d["file_name"], tuple(names), (len(names), d["height"], d["width"])) for d in DatasetCatalog.get(test[0])
        ]
        assert sorted(recorder.shapes) == sorted(expected)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_eval_only_with_weights_that_do_not_fit(datasets, tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"decoder.head.weight": torch.zeros(1), "not.a.layer": torch.zeros(1)}}, bad)
    opts = [
        *_run_opts(datasets, str(tmp_path / "eval")),
        "MODEL.WEIGHTS",
        str(bad),
    ]
    with pytest.raises(ValueError, match="not.a.layer") as err:
        engine.run(_args(opts, eval_only=True))
    assert "missing keys" in str(err.value) and "decoder.head.weight" in str(err.value)


def test_a_run_stopped_before_its_first_write_leaves_no_empty_metrics_file(datasets, tmp_path):
    """Detectron2's writer created an empty metrics.json when the trainer was built: a run killed before its first
    write left it behind. The file comes with its first line."""
    opts = [*_run_opts(datasets, str(tmp_path)), "SOLVER.MAX_ITER", 2, "SOLVER.IMS_PER_BATCH", 2, "TEST.EVAL_PERIOD", 0]
    trainer = engine.Trainer(engine.setup(_args(opts)))
    assert not os.path.exists(os.path.join(tmp_path, "metrics.json"))  # as a run killed now leaves it
    trainer.train()
    assert [it for it, _ in _losses(tmp_path)] == [1]


@pytest.mark.parametrize("precision, dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_amp_precision_reaches_detectron2_amp_trainer(datasets, tmp_path, precision, dtype):
    opts = [
        *_run_opts(datasets, str(tmp_path)),
        "SOLVER.AMP.ENABLED",
        "True",
        "SOLVER.AMP.PRECISION",
        precision,
    ]
    trainer = engine.Trainer(engine.setup(_args(opts)))
    assert type(trainer._trainer).__name__ == "AMPTrainer" and trainer._trainer.precision == dtype


def test_unknown_amp_precision_is_refused(datasets, tmp_path):
    opts = [
        *_run_opts(datasets, str(tmp_path)),
        "SOLVER.AMP.PRECISION",
        "float8",
    ]
    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION must be one of"):
        engine.Trainer(engine.setup(_args(opts)))


def test_training_without_sam_weights_is_refused_unless_asked_for(datasets, tmp_path):
    """Training from random SAM weights needs an explicit opt-out; evaluation from MODEL.WEIGHTS needs no SAM file."""
    opts = [
        *_run_opts(datasets, str(tmp_path)),
        "MODEL.ESC_NET.ALLOW_RANDOM_SAM",
        "False",
    ]
    with pytest.raises(ValueError, match=r"MODEL\.ESC_NET\.SAM_CHECKPOINT.*sam_vit_b_01ec64\.pth.*ALLOW_RANDOM_SAM"):
        engine.Trainer(engine.setup(_args(opts)))
    assert not os.path.exists(os.path.join(tmp_path, "last_checkpoint"))
    # the same config evaluates (and builds) without a SAM file: the weights would come from MODEL.WEIGHTS
    model = engine.Trainer.build_model(engine.setup(_args(opts)))
    assert all(block.sam is not None for block in model.blocks)
