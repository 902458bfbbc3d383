"""The semantic-segmentation dataset mapper: vocabulary, augmentation, geometry, padding and bad input."""

import numpy as np
import pytest
from detectron2.data import MetadataCatalog
from PIL import Image

from conftest import tiny_cfg
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
    """Ids above 255 survive reading, resizing, cropping and padding (padding uses the 65535 ignore value)."""
    image = _write(tmp_path, "img.png", np.zeros((48, 48, 3), np.uint8))
    values = np.full((48, 48), 800, np.uint16)
    values[:, 24:] = 65535
    label = str(tmp_path / "label.tif")
    Image.fromarray(values).save(label)
    cfg = tiny_cfg("MODEL.ESC_NET.IGNORE_VALUE", 65535, "INPUT.MIN_SIZE_TRAIN", (48,), "INPUT.MAX_SIZE_TRAIN", 48)
    out = SemanticSegmentationMapper(cfg, is_train=True)(
        {"file_name": image, "sem_seg_file_name": label, "height": 48, "width": 48}
    )
    sem_seg = out["sem_seg"].numpy()
    assert sem_seg.shape == (64, 64) and set(np.unique(sem_seg)) == {800, 65535}
    assert (sem_seg[48:] == 65535).all() and (sem_seg[:, 48:] == 65535).all()
    assert (sem_seg[:48][(sem_seg[:48] != 65535)] == 800).all()


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


def _three_class_dataset(name, classes=("a", "b", "c")):
    MetadataCatalog.get(name).set(stuff_classes=list(classes))
    return name


def test_every_input_carries_its_datasets_vocabulary(tmp_path):
    """The vocabulary rides with the data: training inputs carry DATASETS.TRAIN's names, test inputs those of the
    dataset the loader reads, as one shared list object (no copy per image)."""
    train = _three_class_dataset("mapper_test_train_vocabulary")
    test = _three_class_dataset("mapper_test_test_vocabulary", ("sofa, couch", "wall"))
    cfg = tiny_cfg("DATASETS.TRAIN", (train,))
    image = _write(tmp_path, "img.png", np.zeros((64, 64, 3), np.uint8))
    label = _write(tmp_path, "label.png", np.full((64, 64), 2, np.uint8))
    record = {"file_name": image, "sem_seg_file_name": label, "height": 64, "width": 64}
    train_mapper = SemanticSegmentationMapper(cfg, is_train=True)
    first, second = train_mapper(record), train_mapper(record)
    assert first["vocabulary"] == ["a", "b", "c"] and first["vocabulary"] is second["vocabulary"]
    test_out = SemanticSegmentationMapper(cfg, is_train=False, dataset_name=test)(record)
    assert test_out["vocabulary"] == ["sofa, couch", "wall"]
    assert "vocabulary" not in SemanticSegmentationMapper(cfg, is_train=False)(record)


def test_training_datasets_with_different_vocabularies_are_refused():
    one = _three_class_dataset("mapper_test_vocabulary_one")
    other = _three_class_dataset("mapper_test_vocabulary_other", ("x", "y"))
    with pytest.raises(ValueError, match="different vocabularies"):
        SemanticSegmentationMapper(tiny_cfg("DATASETS.TRAIN", (one, other)), is_train=True)


def test_color_augmentation_is_detectron2s_ssd_transform(tmp_path):
    """INPUT.COLOR_AUG_SSD is SSD's colour augmentation as Detectron2 implements it (hue included): colours change,
    labels and geometry do not."""
    from detectron2.projects.point_rend import ColorAugSSDTransform

    cfg = tiny_cfg("INPUT.COLOR_AUG_SSD", True, "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64)
    mapper = SemanticSegmentationMapper(cfg, is_train=True)
    assert any(isinstance(getattr(a, "tfm", a), ColorAugSSDTransform) for a in mapper.augmentations.augs)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image = _write(tmp_path, "img.png", pixels)
    labels = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64) % 3
    label = _write(tmp_path, "label.png", labels)
    record = {"file_name": image, "sem_seg_file_name": label, "height": 64, "width": 64}
    outputs = [mapper(record) for _ in range(8)]
    for out in outputs:  # a flip may mirror both, nothing else moves a label
        sem_seg = out["sem_seg"].numpy()
        assert np.array_equal(sem_seg, labels) or np.array_equal(sem_seg, labels[:, ::-1])
    unflipped = [o["image"].numpy().transpose(1, 2, 0) for o in outputs if np.array_equal(o["sem_seg"].numpy(), labels)]
    assert any(not np.array_equal(x, pixels) for x in unflipped), "no colour changed in 8 draws"


def test_training_crops_must_be_the_clip_input():
    """One source of geometry: a training crop that is not CLIP_IMAGE_SIZE square is refused, naming both keys."""
    with pytest.raises(ValueError, match=r"INPUT\.CROP .*MODEL\.ESC_NET\.CLIP_IMAGE_SIZE \(64, 64\)"):
        SemanticSegmentationMapper(tiny_cfg("INPUT.CROP.SIZE", (48, 48)), is_train=True)
    with pytest.raises(ValueError, match="'absolute'"):
        SemanticSegmentationMapper(tiny_cfg("INPUT.CROP.TYPE", "relative_range"), is_train=True)
