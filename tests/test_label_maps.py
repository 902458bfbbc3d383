"""One rule for the integer type of label maps: uint8 up to 255 classes (255 is the ignore value), else uint16."""

import numpy as np
import pytest
import torch

from esc_net.data.prepare.common import LabelMapping
from esc_net.modeling.full_resolution import label_dtype as prediction_dtype
from esc_net.modeling.full_resolution import upsampled_labels
from esc_net.utils.label_maps import ignore_value, label_dtype


def test_the_cut_lies_below_the_uint8_ignore_value():
    assert [label_dtype(n) for n in (1, 254, 255, 256, 65535)] == [np.uint8] * 3 + [np.uint16] * 2
    assert [ignore_value(n) for n in (1, 255, 256, 847)] == [255, 255, 65535, 65535]
    for num_classes in (0, 65536):
        with pytest.raises(ValueError, match=f"1 to 65535 classes .* got {num_classes}"):
            label_dtype(num_classes)


def test_a_prediction_of_class_255_is_not_written_as_the_ignore_value():
    """With 256 classes, a predicted label map cannot be uint8: its class 255 would read back as 'ignore'."""
    assert prediction_dtype(255) == torch.uint8
    scores = torch.zeros(256, 2, 2)
    scores[255] = 1.0
    labels = upsampled_labels(scores, (3, 3))["sem_seg_labels"]
    assert labels.dtype != torch.uint8 and labels.dtype.is_signed
    assert (labels == 255).all()


@pytest.mark.parametrize("num_classes, dtype, ignore", [(255, np.uint8, 255), (256, np.uint16, 65535)])
def test_prepared_label_maps_follow_the_rule(num_classes, dtype, ignore):
    """The preparation commands' lookup table: class i at raw value i + 1, raw 0 is unlabeled."""
    mapping = LabelMapping(num_classes + 1, range(1, num_classes + 1))
    labels = mapping(np.array([[0, 1, num_classes]]), "test.png")
    assert labels.dtype == dtype
    np.testing.assert_array_equal(labels, [[ignore, 0, num_classes - 1]])
