"""ESCNetPredictor: BGR input at any size -> per-class scores at that size, strict weights, checked vocabulary."""

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from conftest import tiny_cfg
from esc_net.data import get_dataset_vocabulary
from esc_net.predictor import ESCNetPredictor, class_color, class_colors, class_index, display_name, vocabulary_metadata

VOCABULARY = ["red circle", "blue square", "sofa, couch"]


def _image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny model (seed 0) and its checkpoint, saved by Detectron2's checkpointer as model.pth."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    folder = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(model, save_dir=str(folder)).save("model")
    return model, str(folder / "model.pth")


@pytest.fixture(scope="module")
def predictor(saved_model):
    torch.manual_seed(1)  # another init than the saved model's: only loading can make them agree
    predictor = ESCNetPredictor(tiny_cfg("MODEL.WEIGHTS", saved_model[1]))
    predictor.set_vocabulary(VOCABULARY)
    return predictor


def test_scores_at_input_size_with_labels_in_range(predictor):
    image = _image(50, 70)
    scores = predictor(image)["sem_seg"]
    assert scores.shape == (3, 50, 70)
    assert scores.dtype == torch.float32
    assert 0.0 <= scores.min() and scores.max() <= 1.0
    labels = scores.argmax(dim=0)
    assert labels.min() >= 0 and labels.max() < len(VOCABULARY)
    assert predictor.vocabulary == VOCABULARY
    assert not predictor.model.training


def test_loaded_weights_and_rgb_conversion_match_the_saved_model(predictor, saved_model):
    model = saved_model[0]
    image_bgr = _image(40, 64, seed=3)
    rgb = torch.as_tensor(np.ascontiguousarray(image_bgr[:, :, ::-1].transpose(2, 0, 1)))
    bgr = torch.as_tensor(np.ascontiguousarray(image_bgr.transpose(2, 0, 1)))
    with torch.no_grad():
        expected = model([{"image": rgb, "height": 40, "width": 64, "vocabulary": VOCABULARY}])[0]["sem_seg"]
        unconverted = model([{"image": bgr, "height": 40, "width": 64, "vocabulary": VOCABULARY}])[0]["sem_seg"]
    got = predictor(image_bgr)["sem_seg"]
    torch.testing.assert_close(got, expected)
    # The channel order matters to the model, so the equality above shows that the predictor converted it.
    assert not torch.allclose(got, unconverted)


def test_bgr_config_gives_the_scores_of_the_rgb_config(predictor, saved_model):
    """INPUT.FORMAT only says how inputs arrive: CLIP always reads RGB normalised with its own statistics, so a
    BGR pipeline scores an image exactly as an RGB one does."""
    bgr_predictor = ESCNetPredictor(tiny_cfg("MODEL.WEIGHTS", saved_model[1], "INPUT.FORMAT", "BGR"))
    bgr_predictor.set_vocabulary(VOCABULARY)
    image_bgr = _image(33, 45, seed=4)
    torch.testing.assert_close(bgr_predictor(image_bgr)["sem_seg"], predictor(image_bgr)["sem_seg"])


def test_weights_that_do_not_fit_raise_listing_keys(saved_model, tmp_path):
    state = torch.load(saved_model[1], map_location="cpu", weights_only=False)
    removed = sorted(state["model"])[0]
    del state["model"][removed]
    state["model"]["not_a_module.weight"] = torch.zeros(2)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="do not fit") as info:
        ESCNetPredictor(tiny_cfg("MODEL.WEIGHTS", str(path)))
    assert removed in str(info.value) and "not_a_module.weight" in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ESCNetPredictor(tiny_cfg("MODEL.WEIGHTS", str(tmp_path / "missing.pth")))


def test_vocabulary_of_one_call(predictor):
    image = _image(40, 40)
    scores = predictor(image, ["sky", "red circle"])["sem_seg"]
    assert scores.shape == (2, 40, 40)
    assert predictor.vocabulary == VOCABULARY  # the predictor's own vocabulary is left as it was
    # the call's vocabulary is the one scored: the predictor's own, given explicitly, scores as the default
    torch.testing.assert_close(predictor(image, list(VOCABULARY))["sem_seg"], predictor(image)["sem_seg"])
    reordered = predictor(image, VOCABULARY[::-1])["sem_seg"]
    assert not torch.allclose(reordered, predictor(image)["sem_seg"])
    with pytest.raises(ValueError, match="the vocabulary is empty"):
        predictor(image, [])


def test_vocabulary_of_one_call_is_checked_like_set_vocabulary(predictor):
    image = _image(24, 24)
    with pytest.raises(TypeError, match="not one string: 'red circle'"):
        predictor(image, "red circle")  # not split into characters
    with pytest.raises(ValueError, match="repeats class names"):
        predictor(image, ["cat", "Cat"])
    with pytest.raises(TypeError, match="1: None"):
        predictor(image, ["cat", None])


def test_vocabulary_is_checked(predictor):
    with pytest.raises(ValueError, match="empty"):
        predictor.set_vocabulary([])
    with pytest.raises(TypeError, match="not one string"):
        predictor.set_vocabulary("cat, dog")
    assert predictor.vocabulary == VOCABULARY  # a refused vocabulary leaves the previous one


def test_no_vocabulary_and_bad_images_are_refused(predictor):
    bare = ESCNetPredictor(tiny_cfg())  # DATASETS.TEST is empty: no vocabulary yet
    assert bare.vocabulary is None
    with pytest.raises(ValueError, match="no vocabulary"):
        bare(_image(32, 32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        predictor(_image(32, 32)[:, :, 0])
    with pytest.raises(ValueError, match="uint8"):
        predictor(_image(32, 32).astype(np.float32))


@pytest.mark.parametrize("output", ["scores", "labels"])
def test_bad_output_sizes_are_refused_in_one_line(predictor, output):
    """A side of 0 once gave an empty label map, and the others PyTorch's messages about tensor sizes."""
    for size in [(0, 5), (-3, 4), (5,), (2.5, 3), 7]:
        with pytest.raises(ValueError, match=r"output_size must be two positive integers \(height, width\), got "):
            predictor(_image(8, 8), output=output, output_size=size)
    key = "sem_seg" if output == "scores" else "sem_seg_labels"
    assert predictor(_image(8, 8), output=output, output_size=(3, 5))[key].shape[-2:] == (3, 5)


def test_visualisation_metadata():
    meta = vocabulary_metadata(["sofa, couch", "cat"])
    assert meta.stuff_classes == ["sofa", "cat"]
    assert display_name(" grass , lawn") == "grass"
    assert vocabulary_metadata(["a", "b"], colors=[[1, 2, 3], [4, 5, 6]]).stuff_colors == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(ValueError, match="2 colours for 3 classes"):
        vocabulary_metadata(["a", "b", "c"], colors=[[1, 2, 3], [4, 5, 6]])


def test_class_colours_follow_the_name_not_the_position():
    """The same name gets the same colour in any vocabulary; background-like names a grey."""
    first = vocabulary_metadata(["background", "blue circle", "red square"]).stuff_colors
    second = vocabulary_metadata(["red square", "sky", "Blue  Circle, disc", "Background"]).stuff_colors
    assert first[1] == second[2] and first[2] == second[0]
    assert len(set(first[0])) == 1 and second[3] == first[0]
    assert len(set(vocabulary_metadata(["black background"]).stuff_colors[0])) == 1
    ade = get_dataset_vocabulary("ade20k_847_val")
    colors = class_colors(ade)
    assert all(0 <= v <= 255 for c in colors for v in c)
    shown = {display_name(n).lower() for n in ade}  # 837: some ADE classes share a first synonym
    assert len({tuple(c) for c in colors}) >= 0.99 * len(shown)  # names hashed apart, a rare collision allowed
    assert all(max(c) - min(c) >= 40 for name, c in zip(ade, colors) if "background" not in name)  # not grey
    # A dataset's own colours for the names it has (the synthetic shapes' blue for "blue circle").
    shapes = MetadataCatalog.get("synthetic_shapes_val")
    blue = shapes.stuff_colors[shapes.stuff_classes.index("blue circle")]
    assert class_colors(["sky", "blue circle"], shapes) == [class_color("sky"), blue]


def test_class_index_by_entry_or_first_synonym():
    assert class_index(VOCABULARY, "sofa, couch") == 2
    assert class_index(VOCABULARY, " sofa ") == 2
    assert class_index(VOCABULARY, "couch") is None  # only the first synonym names the class on screen
    assert class_index(VOCABULARY, "dog") is None


def test_label_output_is_the_argmax_of_the_scores(predictor):
    image = _image(45, 77, seed=5)
    scores = predictor(image)["sem_seg"]
    result = predictor(image, output="labels", top_k=2)
    assert result["sem_seg_labels"].shape == (45, 77) and result["sem_seg_labels"].dtype == torch.uint8
    torch.testing.assert_close(result["sem_seg_labels"].long(), scores.argmax(dim=0))
    top = scores.topk(2, dim=0)
    torch.testing.assert_close(result["sem_seg_topk_labels"].long(), top.indices)
    torch.testing.assert_close(result["sem_seg_topk_scores"].float(), top.values, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="top_k"):
        predictor(image, output="labels", top_k=4)


def test_empty_image_and_bad_vocabularies_are_refused(predictor):
    for shape in ((0, 0, 3), (0, 10, 3), (10, 0, 3)):
        with pytest.raises(ValueError, match="the image is empty"):
            predictor(np.zeros(shape, np.uint8))
    with pytest.raises(TypeError, match="1: None"):
        predictor.set_vocabulary(["cat", None])
    with pytest.raises(TypeError, match="0: 7"):
        predictor.set_vocabulary([7, "dog"])
    with pytest.raises(ValueError, match="without any synonym.*0: ','"):
        predictor.set_vocabulary([" , ", "cat"])
    with pytest.raises(ValueError, match="repeats class names.*'Sofa ,  couch' at 0 and 2"):
        predictor.set_vocabulary(["sofa, couch", "cat", "Sofa ,  couch"])
    assert predictor.vocabulary == VOCABULARY
    long_name = " ".join(["very"] * 40) + " long name"
    try:
        with pytest.warns(UserWarning, match="cut off") as warned:
            predictor.set_vocabulary(["cat", long_name])
        assert predictor.vocabulary == ["cat", long_name]
    finally:  # the module's other tests share this predictor
        predictor.set_vocabulary(VOCABULARY)
    assert long_name in str(warned[0].message) and "'cat'" not in str(warned[0].message)
