"""OpenVocabSemSegEvaluator and the benchmark report, on small label maps written to disk."""

import csv
import json
import math
import re
import uuid

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils import comm
from PIL import Image

from esc_net.evaluation import OpenVocabSemSegEvaluator, summarize_benchmarks
from esc_net.evaluation.iou_chart import MAX_BARS, iou_chart
from esc_net.evaluation.sem_seg_evaluation import group_confusion, group_means, union_miou

SUMMARY = ("mIoU", "fwIoU", "mACC", "pACC")


def _register(name, records, stuff_classes, ignore_label=255, **extra_metadata):
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=list(stuff_classes), ignore_label=ignore_label, **extra_metadata)


@pytest.fixture
def register():
    """Registers tiny datasets under unique names and removes them after the test."""
    names = []

    def _do(records, stuff_classes, **kwargs):
        name = f"eval_test_{uuid.uuid4().hex[:8]}"
        _register(name, records, stuff_classes, **kwargs)
        names.append(name)
        return name

    yield _do
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _write_labels(path, labels):
    """Writes a label map: uint8 -> PNG, uint16 -> 16-bit TIFF (PIL mode "I;16")."""
    Image.fromarray(labels).save(path)
    return str(path)


def _one_hot_scores(pred, num_names, dtype=torch.float32):
    """[H, W] vocabulary indices -> [num_names, H, W] scores whose argmax is ``pred``."""
    return torch.nn.functional.one_hot(torch.as_tensor(pred, dtype=torch.long), num_names).permute(2, 0, 1).to(dtype)


def _records(tmp_path, label_maps):
    records = []
    for i, labels in enumerate(label_maps):
        ext = "tif" if labels.dtype == np.uint16 else "png"
        records.append(
            {
                "file_name": str(tmp_path / f"img_{i}.jpg"),
                "sem_seg_file_name": _write_labels(tmp_path / f"label_{i}.{ext}", labels),
                "height": labels.shape[0],
                "width": labels.shape[1],
            }
        )
    return records


def _process(evaluator, records, scores):
    evaluator.reset()
    for record, s in zip(records, scores):
        evaluator.process([record], [{"sem_seg": s}])


def _run(evaluator, records, scores):
    _process(evaluator, records, scores)
    return evaluator.evaluate()["sem_seg"]


def test_metrics_match_hand_computation(tmp_path, register):
    classes = ["a", "b", "c", "d"]
    gts = [np.array([[0, 0, 1], [1, 255, 2]], np.uint8), np.array([[0, 0, 1], [2, 2, 255]], np.uint8)]
    preds = [np.array([[0, 1, 1], [1, 0, 0]]), np.array([[0, 0, 1], [2, 3, 2]])]
    records = _records(tmp_path, gts)
    name = register(records, classes)
    res = _run(OpenVocabSemSegEvaluator(name, distributed=False), records, [_one_hot_scores(p, 4) for p in preds])

    # Labelled pixels (gt -> pred), the two ignored pixels left out:
    #   image 0: a->a, a->b, b->b, b->b, c->a      image 1: a->a, a->a, b->b, c->c, c->d
    # per class: ground-truth pixels a 4, b 3, c 3, d 0 (10 in all); predicted a 4, b 4, c 1, d 1; correct a 3,
    # b 3, c 1. IoU = tp / (gt + pred - tp): a 3/5, b 3/4, c 1/3; d never occurs in the ground truth, so its IoU
    # is NaN and it is left out of the means although it was predicted once (as in Detectron2).
    iou = {"a": 3 / 5, "b": 3 / 4, "c": 1 / 3}
    acc = {"a": 3 / 4, "b": 3 / 3, "c": 1 / 3}
    assert res["mIoU"] == pytest.approx(100 * (3 / 5 + 3 / 4 + 1 / 3) / 3)
    assert res["fwIoU"] == pytest.approx(100 * (4 / 10 * 3 / 5 + 3 / 10 * 3 / 4 + 3 / 10 * 1 / 3))
    assert res["mACC"] == pytest.approx(100 * (3 / 4 + 1 + 1 / 3) / 3)
    assert res["pACC"] == pytest.approx(100 * 7 / 10)
    for c in "abc":
        assert res[f"IoU-{c}"] == pytest.approx(100 * iou[c])
        assert res[f"ACC-{c}"] == pytest.approx(100 * acc[c])
    assert math.isnan(res["IoU-d"]) and math.isnan(res["ACC-d"])
    # The other convention, from the same matrix: d was predicted once and is in no ground truth, so it counts 0.
    assert res["mIoU-union"] == pytest.approx(100 * (3 / 5 + 3 / 4 + 1 / 3 + 0) / 4)


def test_union_miou_on_a_hand_made_confusion_matrix():
    """[pred, gt] counts, the last row and column (ignored pixels) left out: a class neither in the ground truth nor
    predicted takes no part; one predicted but absent counts 0 in mIoU-union only."""
    conf = np.zeros((5, 5), np.int64)
    conf[0, 0], conf[1, 0], conf[1, 1], conf[3, 1] = 6, 2, 4, 2  # class 2 never occurs; class 3 only predicted
    conf[4, 0] = conf[0, 4] = 50  # ignored pixels
    iou = {0: 6 / 8, 1: 4 / 8, 3: 0.0}
    assert union_miou(conf) == pytest.approx(100 * sum(iou.values()) / 3)
    assert math.isnan(union_miou(np.zeros((3, 3), np.int64)))


def _random_dataset(tmp_path, num_images=4, num_classes=5, seed=0):
    """Label maps of varying sizes using classes 0..num_classes-2 and ignore pixels, plus random scores."""
    rng = np.random.default_rng(seed)
    gts, scores = [], []
    for i in range(num_images):
        h, w = 20 + 3 * i, 31 - 2 * i
        gt = rng.integers(0, num_classes - 1, size=(h, w)).astype(np.uint8)  # the last class is never labelled
        gt[rng.random((h, w)) < 0.1] = 255
        gts.append(gt)
        scores.append(torch.from_numpy(rng.normal(size=(num_classes, h, w)).astype(np.float32)))
    return _records(tmp_path, gts), scores


def test_agrees_with_detectron2_semseg_evaluator(tmp_path, register):
    records, scores = _random_dataset(tmp_path)
    classes = [f"class {i}" for i in range(5)]
    name = register(records, classes)
    # Detectron2's test-time inputs: no sem_seg_file_name (the evaluator finds it through the dataset).
    inputs = [{k: r[k] for k in ("file_name", "height", "width")} for r in records]

    ours = _run(OpenVocabSemSegEvaluator(name, distributed=False), inputs, scores)
    reference = _run(SemSegEvaluator(name, distributed=False), inputs, scores)

    assert math.isnan(ours["IoU-class 4"])  # predicted but never labelled
    assert ours.pop("images") == len(records)  # how many images were scored, beside Detectron2's metrics
    assert [k for k in ours if k != "mIoU-union"] == [k for k in reference if k in ours]  # ours adds mIoU-union
    assert set(ours) == set(SUMMARY) | {f"{m}-{c}" for m in ("IoU", "ACC") for c in classes} | {"mIoU-union"}
    assert ours.pop("mIoU-union") < ours["mIoU"]  # class 4 is predicted and never labelled: it counts 0 there
    for key, value in ours.items():
        np.testing.assert_allclose(value, reference[key], rtol=0, atol=1e-6, err_msg=key)


def test_uint16_tiff_with_847_classes(tmp_path, register):
    gt = np.array([[846] * 4, [500] * 4, [65535] * 4, [0] * 4], np.uint16)
    pred = gt.astype(np.int64)
    pred[1, 3] = 846
    pred[2] = 3  # predictions on ignored pixels do not count
    records = _records(tmp_path, [gt])
    assert Image.open(records[0]["sem_seg_file_name"]).mode == "I;16"
    classes = [f"c{i}" for i in range(847)]
    name = register(records, classes, ignore_label=65535)
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    res = _run(evaluator, records, [_one_hot_scores(pred, 847, torch.float16)])

    # c846: 4 correct, 4 labelled, 5 predicted -> IoU 4/5; c500: 3 correct of 4, 3 predicted -> 3/4; c0: 1.
    assert res["IoU-c846"] == pytest.approx(80.0)
    assert res["IoU-c500"] == pytest.approx(75.0)
    assert res["IoU-c0"] == pytest.approx(100.0)
    assert res["mIoU"] == pytest.approx(100 * (0.8 + 0.75 + 1) / 3)
    assert res["pACC"] == pytest.approx(100 * 11 / 12)
    assert sum(not math.isnan(res[f"IoU-{c}"]) for c in classes) == 3


def test_pas20b_background_rule(tmp_path, register):
    classes = ["cat", "dog", "car", "background"]
    vocabulary = ["cat", "dog", "car", "wall", "sky", "grass"]
    gt = np.array([[0, 1, 2, 3], [3, 3, 255, 0]], np.uint8)
    pred = np.array([[0, 1, 5, 4], [3, 1, 2, 0]])  # vocabulary indices; 3, 4, 5 are not VOC classes
    records = _records(tmp_path, [gt])
    name = register(records, classes, vocabulary=vocabulary, background_index=3)
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    res = _run(evaluator, records, [_one_hot_scores(pred, 6)])

    # After the rule the prediction is [[0, 1, 3, 3], [3, 1, 2, 0]]; labelled pixels (gt -> pred):
    #   cat->cat, dog->dog, car->bg, bg->bg ("sky"), bg->bg ("wall"), bg->dog, cat->cat (7 pixels)
    # IoU: cat 2/(2+2-2) = 1, dog 1/(1+2-1) = 1/2, car 0/1 = 0, background 2/(3+3-2) = 1/2.
    assert res["IoU-background"] == pytest.approx(50.0)
    assert res["mIoU"] == pytest.approx(100 * (1 + 0.5 + 0 + 0.5) / 4)
    assert res["fwIoU"] == pytest.approx(100 * (2 * 1 + 1 * 0.5 + 1 * 0 + 3 * 0.5) / 7)
    assert res["mACC"] == pytest.approx(100 * (1 + 1 + 0 + 2 / 3) / 4)
    assert res["pACC"] == pytest.approx(100 * 5 / 7)
    # The same rule for the labels output: vocabulary indices, not evaluated ids.
    evaluator.reset()
    evaluator.process(records, [{"sem_seg_labels": torch.as_tensor(pred, dtype=torch.uint8)}])
    np.testing.assert_equal(dict(evaluator.evaluate()["sem_seg"]), dict(res))

    with pytest.raises(ValueError, match=r"expected scores of shape \[6, H, W\]"):
        evaluator.process([records[0]], [{"sem_seg": _one_hot_scores(pred.clip(max=3), 4)}])


def _distributed_worker(rank, init_file, records, classes, scores, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", world_size=2, rank=rank)
    comm.create_local_process_group(2)  # what detectron2.engine.launch sets up besides the process group
    _register("eval_test_two_processes", records, classes)
    evaluator = OpenVocabSemSegEvaluator("eval_test_two_processes", distributed=True)
    _process(evaluator, records[rank::2], scores[rank::2])
    torch.save(evaluator.evaluate(), f"{result_file}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_give_the_single_process_numbers(tmp_path, register):
    records, scores = _random_dataset(tmp_path, num_images=4)
    classes = [f"class {i}" for i in range(5)]
    single = _run(OpenVocabSemSegEvaluator(register(records, classes), distributed=False), records, scores)

    result_file = tmp_path / "result"
    worker_args = (str(tmp_path / "pg_init"), records, classes, scores, str(result_file))
    mp.spawn(_distributed_worker, args=worker_args, nprocs=2)

    main = torch.load(f"{result_file}.0", weights_only=False)["sem_seg"]
    assert torch.load(f"{result_file}.1", weights_only=False) is None  # only the main process reports
    assert main.keys() == single.keys()
    for key in single:
        np.testing.assert_allclose(main[key], single[key], rtol=0, atol=1e-9, err_msg=key)


def test_bad_label_maps_raise_errors_naming_the_file(tmp_path, register):
    records = _records(tmp_path, [np.zeros((4, 5), np.uint8), np.array([[0, 1], [7, 255]], np.uint8)])
    name = register(records, ["a", "b", "c"])
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)

    with pytest.raises(ValueError, match=re.escape(records[0]["sem_seg_file_name"]) + r".*\(4, 5\).*\(4, 6\)"):
        evaluator.process([records[0]], [{"sem_seg": torch.zeros(3, 4, 6)}])
    with pytest.raises(ValueError, match=re.escape(records[1]["sem_seg_file_name"]) + r" contains values \[7\]"):
        evaluator.process([records[1]], [{"sem_seg": torch.zeros(3, 2, 2)}])


def test_no_labelled_pixel_is_an_error(tmp_path, register):
    records = _records(tmp_path, [np.full((2, 3), 255, np.uint8)])
    evaluator = OpenVocabSemSegEvaluator(register(records, ["a", "b"]), distributed=False)
    _process(evaluator, records, [torch.zeros(2, 2, 3)])
    with pytest.raises(ValueError, match="no labelled pixel of 'eval_test_.*' was evaluated"):
        evaluator.evaluate()


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({"ignore_label": 1}, "ignore_label 1 is also a class id"),
        ({"vocabulary": ["a", "b", "wall"]}, "scores 3 vocabulary names for 2 evaluated classes"),
        ({"vocabulary": ["a", "b", "wall"], "background_index": 2}, "background_index 2 is not an evaluated class"),
    ],
)
def test_inconsistent_metadata_is_rejected(register, metadata, message):
    name = register([], ["a", "b"], **metadata)
    with pytest.raises(ValueError, match=message):
        OpenVocabSemSegEvaluator(name)


def _result(register, folder, conf, classes):
    """The evaluator's result on a one-row image whose (ground truth, prediction) pixel pairs ``conf`` counts."""
    conf = np.asarray(conf)
    gt, pred = np.nonzero(conf)
    gt, pred = np.repeat(gt, conf[gt, pred]), np.repeat(pred, conf[gt, pred])
    folder.mkdir()
    records = _records(folder, [gt[None].astype(np.uint8)])
    evaluator = OpenVocabSemSegEvaluator(register(records, classes), distributed=False)
    return {"sem_seg": _run(evaluator, records, [_one_hot_scores(pred[None], len(classes))])}


def test_benchmark_report_table_and_files(tmp_path, register):
    pas = register([], ["cat", "background"], benchmark="PAS-20b")
    ade = register([], ["wall", "floor", "tree"], benchmark="A-150")
    results = {  # given out of the paper's order, with a dataset outside the paper
        "my_custom_set": _result(register, tmp_path / "custom", [[5, 1], [1, 3]], ["x", "y"]),
        pas: _result(register, tmp_path / "pas", [[3, 1], [0, 4]], ["cat", "background"]),
        ade: _result(register, tmp_path / "ade", [[6, 0, 0], [2, 2, 0], [0, 0, 0]], ["wall", "floor", "tree"]),
    }
    table = summarize_benchmarks(results, str(tmp_path))

    header, _, row, union, images = table.splitlines()
    assert [c.strip() for c in header.split("|")[2:-1]] == ["A-150", "PAS-20b", "my_custom_set"]
    # wall 6/8, floor 2/4, tree absent -> 62.5; PAS-20b: cat 3/4, background 4/5 -> 77.5;
    # custom: x 5/7, y 3/5 -> 65.71
    assert [c.strip() for c in row.split("|")[1:-1]] == ["mIoU", "62.5", "77.5", "65.7"]
    # no class is predicted without being in the ground truth here: both conventions agree
    assert [c.strip() for c in union.split("|")[1:-1]] == ["mIoU-union", "62.5", "77.5", "65.7"]
    assert [c.strip() for c in images.split("|")[1:-1]] == ["images", "1", "1", "1"]

    summary = json.loads((tmp_path / "benchmark_results.json").read_text())
    assert summary["benchmarks"] == ["A-150", "PAS-20b", "my_custom_set"]
    assert summary["results"][ade]["mIoU"] == pytest.approx(62.5)
    assert summary["results"][ade]["IoU"] == {"wall": 75.0, "floor": 50.0, "tree": None}
    assert summary["results"][pas]["ACC"]["background"] == pytest.approx(100.0)

    with open(tmp_path / "benchmark_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["dataset"], r["benchmark"]) for r in rows] == [(ade, "A-150"), (pas, "PAS-20b"), ("my_custom_set",) * 2]
    assert float(rows[1]["mIoU"]) == pytest.approx(77.5) and float(rows[1]["pACC"]) == pytest.approx(87.5)
    assert rows[1]["images"] == "1" and summary["results"][pas]["images"] == 1

    with open(tmp_path / "per_class_iou.csv") as f:
        per_class = {(r["dataset"], r["class"]): r for r in csv.DictReader(f)}
    assert len(per_class) == 7
    assert float(per_class[(pas, "cat")]["IoU"]) == pytest.approx(75.0)
    assert float(per_class[("my_custom_set", "y")]["IoU"]) == pytest.approx(60.0)
    assert per_class[(ade, "tree")]["IoU"] == ""

    # the chart beside the CSV: three panels of 7 inches at 100 dpi, each 1.2 inches plus 5 rows of 0.17 high
    with Image.open(tmp_path / "per_class_iou.png") as chart:
        assert chart.format == "PNG" and chart.size == (2100, 205)


def _panel(figure, i):
    ax = figure.axes[i]
    return [t.get_text() for t in ax.get_yticklabels()], [bar.get_width() for bar in ax.patches]


def test_iou_chart_ranks_classes_and_skips_absent_ones():
    figure = iou_chart([("A-150", 62.5, {"wall": 75.0, "floor": 50.0, "tree": float("nan"), "sky": 90.0})])
    names, widths = _panel(figure, 0)
    assert names == ["sky", "wall", "floor"]  # best first; "tree" has no ground truth
    assert widths == [90.0, 75.0, 50.0]
    ax = figure.axes[0]
    assert "1 absent" in ax.get_title()
    assert [line.get_xdata()[0] for line in ax.get_lines()] == [62.5]  # the mIoU line


def test_iou_chart_of_a_large_vocabulary_shows_the_best_and_the_worst():
    iou = {f"class {i}": float(i) / 10 for i in range(847)}
    names, widths = _panel(iou_chart([("A-847", 42.3, iou)]), 0)
    half = MAX_BARS // 2
    assert len(names) == MAX_BARS
    assert names[:half] == [f"class {i}" for i in range(846, 846 - half, -1)]
    assert names[half:] == [f"class {i}" for i in range(half - 1, -1, -1)]
    assert widths == sorted(widths, reverse=True)
    texts = [t.get_text() for t in iou_chart([("A-847", 42.3, iou)]).axes[0].texts]
    assert texts == [f"... {847 - MAX_BARS} classes in between ..."]


def test_benchmark_report_rejects_malformed_results():
    with pytest.raises(ValueError, match="'broken' lack \\['mIoU', 'fwIoU', 'mACC', 'pACC', 'images'\\]"):
        summarize_benchmarks({"broken": {"mIoU": 40.0}})


def test_label_map_outputs_give_the_numbers_of_scores_and_nan_scores_raise(tmp_path, register):
    records, scores = _random_dataset(tmp_path)
    classes = [f"c{i}" for i in range(5)]
    name = register(records, classes)
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    from_scores = _run(evaluator, records, scores)
    preds = [s.argmax(dim=0) for s in scores]
    evaluator.reset()
    for record, pred in zip(records, preds):
        evaluator.process([record], [{"sem_seg_labels": pred.to(torch.uint8)}])
    np.testing.assert_equal(dict(evaluator.evaluate()["sem_seg"]), dict(from_scores))  # NaN == NaN here
    scores = scores[0].clone()
    scores[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN") as info:
        evaluator.process([records[0]], [{"sem_seg": scores}])
    assert records[0]["file_name"] in str(info.value)
    with pytest.raises(ValueError, match="label map"):
        evaluator.process([records[0]], [{"sem_seg_labels": torch.full(preds[0].shape, len(classes))}])


def test_class_groups_give_seen_unseen_and_harmonic_means(tmp_path, register):
    """A dataset with seen / unseen class groups gets the mean IoU of each and their harmonic mean, in the results
    and as rows of the benchmark table (empty for a dataset without groups)."""
    classes = ["wall", "cat", "dog"]
    conf = [[6, 2, 0], [0, 3, 1], [0, 1, 1]]  # [gt, pred]: wall 6/8, cat 3/7, dog 1/3
    folder = tmp_path / "zs"
    folder.mkdir()
    gt, pred = np.nonzero(np.asarray(conf))
    counts = np.asarray(conf)[gt, pred]
    records = _records(folder, [np.repeat(gt, counts)[None].astype(np.uint8)])
    name = register(records, classes, benchmark="ZS", class_groups={"seen": ["wall", "cat"], "unseen": ["dog"]})
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    metrics = _run(evaluator, records, [_one_hot_scores(np.repeat(pred, counts)[None], 3)])
    seen, unseen = (75.0 + 100 * 3 / 7) / 2, 100 / 3
    assert metrics["mIoU-seen"] == pytest.approx(seen) and metrics["mIoU-unseen"] == pytest.approx(unseen)
    assert metrics["hIoU"] == pytest.approx(2 * seen * unseen / (seen + unseen))
    # the groups' confusion: seen pixels (wall, cat: 12) predicted dog: 1; unseen pixels (dog: 2) predicted cat: 1
    assert metrics["seen-as-unseen"] == pytest.approx(100 / 12) and metrics["unseen-as-seen"] == pytest.approx(50)

    plain = register([], ["x", "y"], benchmark="plain")
    table = summarize_benchmarks(
        {name: {"sem_seg": metrics}, plain: _result(register, tmp_path / "plain", [[5, 1], [1, 3]], ["x", "y"])},
        str(tmp_path),
    )
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table.splitlines()[2:]}
    assert (
        rows["mIoU-union"][1]
        and rows["mIoU-unseen"] == ["33.3", ""]
        and rows["hIoU"] == [f"{2 * seen * unseen / (seen + unseen):.1f}", ""]
    )
    summary = json.loads((tmp_path / "benchmark_results.json").read_text())["results"]
    assert summary[name]["hIoU"] == pytest.approx(metrics["hIoU"]) and "hIoU" not in summary[plain]
    assert summary[name]["unseen-as-seen"] == pytest.approx(50) and rows["unseen-as-seen"] == ["50.0", ""]
    with pytest.raises(KeyError, match="rabbit"):
        group_means(metrics, {"unseen": ["rabbit"]})
    with pytest.raises(KeyError, match="rabbit"):
        group_confusion(np.zeros((4, 4)), classes, {"unseen": ["rabbit"]})


def test_group_confusion_counts_pixels_of_one_group_predicted_as_the_other():
    """Entry [p, g] of Detectron2's matrix is predicted p, truth g; the ignored row and column do not count, and a
    group without labelled pixels has NaN shares."""
    conf = np.zeros((5, 5))
    conf[0, 0], conf[2, 0], conf[3, 1], conf[1, 1], conf[4, 0] = 6, 2, 1, 3, 50  # [4, 0]: ignored prediction row
    groups = {"seen": ["a", "b"], "unseen": ["c"], "other": ["d"]}
    shares = group_confusion(conf, ["a", "b", "c", "d"], groups)
    assert shares["seen-as-unseen"] == pytest.approx(100 * 2 / 12)
    assert shares["seen-as-other"] == pytest.approx(100 / 12)
    assert np.isnan(shares["unseen-as-seen"]) and np.isnan(shares["other-as-unseen"])
