"""The benchmark summary: one mIoU row over the zero-shot benchmarks, laid out like the paper's Table 1."""

import csv
import json
import logging
import math
import os
from typing import Dict, List, Optional

from detectron2.data import MetadataCatalog
from detectron2.utils.file_io import PathManager
from tabulate import tabulate

from esc_net.evaluation.iou_chart import write_iou_chart

__all__ = ["PAPER_BENCHMARK_ORDER", "summarize_benchmarks"]

# Column order of the paper's Table 1; other benchmarks follow in the order they were given.
PAPER_BENCHMARK_ORDER = ("A-847", "PC-459", "A-150", "PC-59", "PAS-20", "PAS-20b")
_SUMMARY_METRICS = ("mIoU", "fwIoU", "mACC", "pACC")
# Reported where the evaluator computed them: the other convention for classes absent from the ground truth, and the
# means of the seen and unseen classes and the share of each group's pixels taken by the other (datasets with class
# groups).
_GROUP_METRICS = ("mIoU-union", "mIoU-seen", "mIoU-unseen", "hIoU", "seen-as-unseen", "unseen-as-seen")
# How many images each benchmark scored (a dataset accepted incomplete scores fewer than it lists).
_IMAGES = "images"


def _benchmark_name(dataset_name: str) -> str:
    """The dataset's ``benchmark`` metadata (e.g. "A-847"), else the dataset name itself."""
    if dataset_name in MetadataCatalog.list():
        return MetadataCatalog.get(dataset_name).get("benchmark", dataset_name)
    return dataset_name


def _per_class(metrics: Dict[str, float], prefix: str) -> Dict[str, float]:
    return {k[len(prefix) :]: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def _json_number(value: float) -> Optional[float]:
    # NaN (a class absent from the ground truth) is not valid JSON: write null instead.
    return None if math.isnan(value) else value


def _csv_number(value: float) -> str:
    return "" if math.isnan(value) else repr(value)


def summarize_benchmarks(results: Dict[str, Dict], output_dir: Optional[str] = None, precision: int = 1) -> str:
    """Tabulates mIoU per benchmark, logs the table and writes the full results to ``output_dir``.

    Args:
        results: ``{dataset_name: evaluator result}``, each result being what
            :class:`OpenVocabSemSegEvaluator` returns: ``{"sem_seg": {"mIoU", "fwIoU", "mACC", "pACC", "images",
            "IoU-<class>"..., "ACC-<class>"...}}``. Column names come from each dataset's ``benchmark`` metadata.
        output_dir: if given, these files are written there:

            * ``benchmark_results.json``: ``{"benchmarks": [column order], "results": {dataset_name:
              {"benchmark", "mIoU", "fwIoU", "mACC", "pACC", "images", ["mIoU-union", "mIoU-seen", "mIoU-unseen",
              "hIoU", "seen-as-unseen", "unseen-as-seen",] "IoU": {class: value}, "ACC": {class: value}}}}``
              (where computed: ``mIoU-union`` by OpenVocabSemSegEvaluator, the group means and the groups'
              confusion for datasets with class groups; NaN values, for classes absent from the ground truth, are
              written as null);
            * ``benchmark_results.csv``: one row per dataset: dataset, benchmark, mIoU, fwIoU, mACC, pACC, the
              metrics of ``mIoU-union``, ``mIoU-seen``, ``mIoU-unseen``, ``hIoU``, ``seen-as-unseen``,
              ``unseen-as-seen`` that some dataset has (empty where not computed), images;
            * ``per_class_iou.csv``: one row per dataset and class: dataset, benchmark, class, IoU, ACC (NaN as
              an empty cell);
            * ``per_class_iou.png``: the per-class IoU as bars, one panel per benchmark, best class first, the
              mIoU as a dashed line (see :func:`~esc_net.evaluation.iou_chart.iou_chart`).
        precision: decimals of the mIoU values in the table (the paper uses one).

    Returns:
        The table: a header row of benchmarks (A-847, PC-459, A-150, PC-59, PAS-20, PAS-20b first, when present),
        an "mIoU" row (the paper-comparable convention), where computed rows "mIoU-union" (absent classes that
        are predicted count as 0), "mIoU-seen", "mIoU-unseen", "hIoU", "seen-as-unseen" and "unseen-as-seen"
        (empty cells for the datasets without them), and an "images" row (how many images were scored).
    """
    rows = []
    for dataset_name, result in results.items():
        metrics = result.get("sem_seg") if isinstance(result, dict) else None
        missing = [k for k in (*_SUMMARY_METRICS, _IMAGES) if metrics is None or k not in metrics]
        if missing:
            raise ValueError(
                f"results of dataset {dataset_name!r} lack {missing}: expected an evaluator result "
                '{"sem_seg": {"mIoU": ..., "fwIoU": ..., "mACC": ..., "pACC": ..., "images": ..., "IoU-<class>": ...}}'
            )
        rows.append((dataset_name, _benchmark_name(dataset_name), metrics))

    benchmarks = [b for _, b, _ in rows]
    duplicates = sorted({b for b in benchmarks if benchmarks.count(b) > 1})
    if duplicates:
        raise ValueError(f"several datasets are reported as the same benchmark(s) {duplicates}")
    paper_rank = {b: i for i, b in enumerate(PAPER_BENCHMARK_ORDER)}
    # sorted() is stable, so benchmarks outside the paper's keep the order in which they were given.
    rows.sort(key=lambda row: paper_rank.get(row[1], len(PAPER_BENCHMARK_ORDER)))

    # formatted here: tabulate formats a column as one type, and the image counts share the mIoU's columns
    table = tabulate(
        [
            [metric] + [_table_number(m.get(metric), precision) for _, _, m in rows]
            for metric in ("mIoU", *_group_metrics(rows))
        ]
        + [[_IMAGES] + [str(int(m[_IMAGES])) for _, _, m in rows]],
        headers=[""] + [b for _, b, _ in rows],
        tablefmt="pipe",
        disable_numparse=True,
        stralign="center",
    )
    logging.getLogger("detectron2").info("Open-vocabulary semantic segmentation benchmarks:\n" + table)
    if output_dir:
        _write_results(rows, output_dir)
    return table


def _group_metrics(rows: List) -> List[str]:
    """The group metrics that at least one of the rows has."""
    return [k for k in _GROUP_METRICS if any(k in metrics for _, _, metrics in rows)]


def _table_number(value: Optional[float], precision: int) -> str:
    return "" if value is None or math.isnan(value) else f"{float(value):.{precision}f}"


def _write_results(rows: List, output_dir: str):
    """Writes the JSON, the two CSV files and the chart described in :func:`summarize_benchmarks`."""
    PathManager.mkdirs(output_dir)
    summary = {"benchmarks": [b for _, b, _ in rows], "results": {}}
    for dataset_name, benchmark, metrics in rows:
        entry = {"benchmark": benchmark}
        entry.update({k: _json_number(float(metrics[k])) for k in _SUMMARY_METRICS + _GROUP_METRICS if k in metrics})
        entry[_IMAGES] = int(metrics[_IMAGES])
        for kind in ("IoU", "ACC"):
            entry[kind] = {c: _json_number(v) for c, v in _per_class(metrics, kind + "-").items()}
        summary["results"][dataset_name] = entry
    with PathManager.open(os.path.join(output_dir, "benchmark_results.json"), "w") as f:
        json.dump(summary, f, indent=2)

    with PathManager.open(os.path.join(output_dir, "benchmark_results.csv"), "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        columns = [*_SUMMARY_METRICS, *_group_metrics(rows)]
        writer.writerow(["dataset", "benchmark", *columns, _IMAGES])
        for dataset_name, benchmark, metrics in rows:
            values = [_csv_number(float(metrics[k])) if k in metrics else "" for k in columns]
            writer.writerow([dataset_name, benchmark, *values, int(metrics[_IMAGES])])

    with PathManager.open(os.path.join(output_dir, "per_class_iou.csv"), "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["dataset", "benchmark", "class", "IoU", "ACC"])
        for dataset_name, benchmark, metrics in rows:
            accuracies = _per_class(metrics, "ACC-")
            for name, iou in _per_class(metrics, "IoU-").items():
                writer.writerow([dataset_name, benchmark, name, _csv_number(iou), _csv_number(accuracies[name])])

    panels = [(benchmark, float(metrics["mIoU"]), _per_class(metrics, "IoU-")) for _, benchmark, metrics in rows]
    write_iou_chart(panels, os.path.join(output_dir, "per_class_iou.png"))
