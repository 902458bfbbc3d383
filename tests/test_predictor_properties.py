"""Property-based: whatever image, vocabulary and output request the predictor gets, it returns a valid result or
raises one of its documented errors (TypeError / ValueError with a message), and a refused vocabulary leaves the
previous one in place."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import tiny_cfg
from esc_net.predictor import ESCNetPredictor

DTYPES = [np.uint8, np.uint16, np.int8, np.float32, np.float64, np.bool_]

valid_images = hnp.arrays(dtype=np.uint8, shape=st.tuples(st.integers(0, 40), st.integers(0, 40), st.just(3)))
images = st.one_of(
    valid_images,
    # any dtype and channel count
    hnp.arrays(
        dtype=st.sampled_from(DTYPES), shape=st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(0, 5))
    ),
    # any rank
    hnp.arrays(dtype=st.sampled_from(DTYPES), shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=8)),
    st.none(),
    st.lists(st.integers(0, 255), max_size=4),
)
class_names = st.text(alphabet="ab ,;-é猫", max_size=12)
vocabularies = st.one_of(
    st.lists(class_names, min_size=1, max_size=5),
    st.lists(st.one_of(class_names, st.none(), st.integers(-3, 3), st.floats(allow_nan=True)), max_size=5),
    st.text(max_size=5),
    st.none(),
)


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    predictor = ESCNetPredictor(tiny_cfg())
    predictor.set_vocabulary(["red circle", "sofa, couch"])
    return predictor


def _check_result(result, vocabulary, height, width, output, top_k):
    n = len(vocabulary)
    if output == "scores":
        scores = result["sem_seg"]
        assert scores.shape == (n, height, width) and scores.dtype == torch.float32
        assert torch.isfinite(scores).all() and scores.min() >= 0 and scores.max() <= 1
        return
    labels = result["sem_seg_labels"]
    assert labels.shape == (height, width) and 0 <= int(labels.min()) and int(labels.max()) < n
    if top_k:
        assert result["sem_seg_topk_labels"].shape == (top_k, height, width)
        assert result["sem_seg_topk_scores"].shape == (top_k, height, width)
        torch.testing.assert_close(result["sem_seg_topk_labels"][0], labels)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    image=images,
    vocabulary=vocabularies,
    output=st.sampled_from(["scores", "labels", "logits"]),
    top_k=st.integers(-1, 4),
)
def test_every_input_gives_a_valid_result_or_a_documented_error(predictor, image, vocabulary, output, top_k):
    before = predictor.vocabulary
    try:
        predictor.set_vocabulary(vocabulary)
    except (TypeError, ValueError) as error:
        assert str(error), "an error without a message"
        assert predictor.vocabulary == before, "a refused vocabulary replaced the previous one"
    else:
        # what was accepted is a real vocabulary: strings, each with a synonym, no two alike
        keys = [tuple(s.strip().lower() for s in name.split(",") if s.strip()) for name in predictor.vocabulary]
        assert all(isinstance(n, str) for n in vocabulary) and all(keys) and len(set(keys)) == len(keys)
    try:
        result = predictor(image, output=output, top_k=top_k)
    except ValueError as error:
        assert str(error), "an error without a message"
        return
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert output in ("scores", "labels") and 0 <= top_k <= len(predictor.vocabulary)
    _check_result(
        result, predictor.vocabulary, image.shape[0], image.shape[1], output, top_k if output == "labels" else 0
    )
