"""Open-vocabulary semantic-segmentation evaluation and the benchmark report."""

from esc_net.evaluation.benchmark_report import PAPER_BENCHMARK_ORDER, summarize_benchmarks
from esc_net.evaluation.sem_seg_evaluation import OpenVocabSemSegEvaluator

__all__ = ["OpenVocabSemSegEvaluator", "summarize_benchmarks", "PAPER_BENCHMARK_ORDER"]
