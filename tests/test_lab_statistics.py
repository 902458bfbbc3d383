"""The statistics the laboratory's ablation table rests on (benchmarks/benchmark_lab_ablations.py)."""

import os
import sys

import numpy as np
import pytest
from scipy import stats

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
from benchmark_lab_ablations import compare, welch  # noqa: E402


@pytest.mark.parametrize("shift", [0.0, 1.0, 3.0])
def test_the_interval_excludes_zero_exactly_when_welchs_test_rejects(shift):
    rng = np.random.default_rng(int(shift * 10))
    values, baseline = list(rng.normal(shift, 1.5, 8)), list(rng.normal(0, 1.0, 8))
    w = welch(values, baseline)
    p = stats.ttest_ind(values, baseline, equal_var=False).pvalue
    assert w["difference"] == pytest.approx(np.mean(values) - np.mean(baseline))
    assert (w["ci_low"] > 0 or w["ci_high"] < 0) == (p < 0.05)
    # the smallest detectable difference shrinks with more runs of the same spread
    assert welch(values * 2, baseline * 2)["detectable"] < w["detectable"]


def test_the_comparison_table_has_a_row_per_variant_with_enough_seeds():
    def results(value):
        metrics = {"mIoU": value, "mIoU-seen": value, "mIoU-unseen": value, "hIoU": value}
        names = ("synthetic_shapes_val", "synthetic_shapes_val_unseen", "synthetic_shapes_val_all")
        return {name: metrics for name in names}

    runs = {
        "default": {0: results(40.0), 1: results(42.0)},
        "better": {0: results(50.0), 1: results(51.0), 2: results(52.0)},
        "single": {0: results(10.0)},
    }
    table = compare(runs)
    assert "| better | 3 vs 2 | +10.0 [" in table and "single" not in table
    assert compare({"better": runs["better"]}) == ""  # no baseline, no comparison
