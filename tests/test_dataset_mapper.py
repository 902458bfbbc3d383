"""The semantic-segmentation dataset mapper: augmentation, padding and bad input."""
import numpy as np
import pytest
from conftest import tiny_cfg
from PIL import Image

from esc_net.data import SemanticSegmentationMapper


def _write(tmp_path, name, array, mode=None):
    path = str(tmp_path / name)
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_training_crop_is_padded_with_ignore_for_small_and_grayscale_images(tmp_path):
    cfg = tiny_cfg("INPUT.MIN_SIZE_TRAIN", (40,), "INPUT.MAX_SIZE_TRAIN", 40)
    mapper = SemanticSegmentationMapper(cfg, is_train=True)
    gray = _write(tmp_path, "gray.png", np.full((30, 40), 128, np.uint8))
    label = _write(tmp_path, "gray_label.png", np.full((30, 40), 3, np.uint8))
    out = mapper({"file_name": gray, "sem_seg_file_name": label, "height": 30, "width": 40})
    assert out["image"].shape == (3, 64, 64)  # grayscale -> RGB, padded to the 64x64 crop
    sem_seg = out["sem_seg"].numpy()
    assert sem_seg.shape == (64, 64)
    assert set(np.unique(sem_seg)) == {3, 255}
    assert (sem_seg[:, 40:] == 255).all() and (sem_seg[30:] == 255).all()


def test_uint16_labels_keep_their_values(tmp_path):
    mapper = SemanticSegmentationMapper(tiny_cfg(), is_train=True)
    image = _write(tmp_path, "img.png", np.zeros((64, 64, 3), np.uint8))
    values = np.full((64, 64), 800, np.uint16)
    values[:, 32:] = 65535
    label = str(tmp_path / "label.tif")
    Image.fromarray(values).save(label)
    cfg = tiny_cfg("MODEL.ESC_NET.IGNORE_VALUE", 65535)
    out = SemanticSegmentationMapper(cfg, is_train=True)(
        {"file_name": image, "sem_seg_file_name": label, "height": 64, "width": 64}
    )
    assert set(np.unique(out["sem_seg"].numpy())) <= {800, 65535}
    assert mapper.ignore_label == 255


def test_bad_inputs_name_the_file(tmp_path):
    mapper = SemanticSegmentationMapper(tiny_cfg(), is_train=True)
    image = _write(tmp_path, "img.png", np.zeros((64, 64, 3), np.uint8))
    small_label = _write(tmp_path, "small.png", np.zeros((32, 64), np.uint8))
    with pytest.raises(ValueError, match="small.png"):
        mapper({"file_name": image, "sem_seg_file_name": small_label})
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(IOError, match="broken.jpg"):
        mapper({"file_name": str(broken), "sem_seg_file_name": small_label})


def test_inference_keeps_the_image_and_its_size(tmp_path):
    mapper = SemanticSegmentationMapper(tiny_cfg(), is_train=False)
    image = _write(tmp_path, "img.png", np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    out = mapper({"file_name": image, "sem_seg_file_name": "unused.png"})
    assert out["image"].shape == (3, 50, 70) and (out["height"], out["width"]) == (50, 70)


def test_training_label_outside_the_vocabulary_names_the_file(tmp_path):
    from detectron2.data import MetadataCatalog

    MetadataCatalog.get("mapper_test_three_classes").set(stuff_classes=["a", "b", "c"])
    cfg = tiny_cfg("DATASETS.TRAIN", ("mapper_test_three_classes",))
    mapper = SemanticSegmentationMapper(cfg, is_train=True)
    image = _write(tmp_path, "img.png", np.zeros((64, 64, 3), np.uint8))
    values = np.full((64, 64), 2, np.uint8)
    values[5, 5], values[6, 6] = 7, 255  # 7 is no class of three; 255 is the ignore value
    label = _write(tmp_path, "label.png", values)
    with pytest.raises(ValueError, match=r"label.png holds class ids \[7\] outside \[0, 3\)"):
        mapper({"file_name": image, "sem_seg_file_name": label, "height": 64, "width": 64})
