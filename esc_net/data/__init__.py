"""Data: dataset registration (on import), the dataset mapper, and vocabularies."""
from . import datasets, synthetic_shapes  # noqa: F401  (registers the datasets with Detectron2)
from .dataset_mapper import SemanticSegmentationMapper
from .vocabulary import check_vocabulary, get_dataset_vocabulary

__all__ = ["SemanticSegmentationMapper", "check_vocabulary", "get_dataset_vocabulary"]
