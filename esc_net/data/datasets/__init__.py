"""Detectron2 registration of COCO-Stuff and the zero-shot benchmarks (importing this package registers them), and
of a dataset of one's own in one call (:func:`register_sem_seg_folder`)."""

from esc_net.data.datasets.complete_sem_seg import (
    IncompleteDatasetError,
    incomplete_datasets_allowed,
    load_complete_sem_seg,
)
from esc_net.data.datasets.folder import register_sem_seg_folder
from esc_net.data.datasets.register_benchmarks import (
    BENCHMARK_DATASETS,
    VOC_NAMES_IN_PASCAL_CONTEXT,
    BenchmarkDataset,
    load_benchmark,
)

__all__ = [
    "BENCHMARK_DATASETS",
    "VOC_NAMES_IN_PASCAL_CONTEXT",
    "BenchmarkDataset",
    "IncompleteDatasetError",
    "incomplete_datasets_allowed",
    "load_benchmark",
    "load_complete_sem_seg",
    "register_sem_seg_folder",
]
