"""Detectron2 registration of COCO-Stuff and the zero-shot benchmarks; importing this package registers them."""

from .register_benchmarks import BENCHMARK_DATASETS, VOC_NAMES_IN_PASCAL_CONTEXT, BenchmarkDataset, load_benchmark

__all__ = ["BENCHMARK_DATASETS", "VOC_NAMES_IN_PASCAL_CONTEXT", "BenchmarkDataset", "load_benchmark"]
