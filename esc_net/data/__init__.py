"""Data: dataset registration (the benchmarks on import; a dataset of one's own with
:func:`register_sem_seg_folder`), the dataset mapper, and vocabularies."""

from esc_net.data import datasets, synthetic_shapes  # noqa: F401  (registers the datasets with Detectron2)
from esc_net.data.dataset_mapper import SemanticSegmentationMapper
from esc_net.data.datasets import register_sem_seg_folder
from esc_net.data.vocabulary import get_dataset_vocabulary, resolve_vocabularies
from esc_net_runtime.vocabulary_rules import check_vocabulary

__all__ = [
    "SemanticSegmentationMapper",
    "check_vocabulary",
    "get_dataset_vocabulary",
    "register_sem_seg_folder",
    "resolve_vocabularies",
]
