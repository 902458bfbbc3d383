"""The command-line demo (esc-net-demo, demo/demo.py): inputs (folder, glob), vocabularies, the files written, and the
documented errors."""

import gc
import os
import subprocess
import sys
import weakref
import zlib

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from conftest import REPO_ROOT, TINY_CONFIG, tiny_cfg
from esc_net.demo import cli as demo
from esc_net.predictor import ESCNetPredictor

NO_DATASETS = ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]
SIZES = {"a.png": (48, 64), "b.png": (70, 40), "c.jpg": (64, 64)}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of three images of different sizes, and a stray text file the folder listing must skip."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        assert cv2.imwrite(str(folder / name), rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(build_model(tiny_cfg()), save_dir=str(folder)).save("model")
    return str(folder / "model.pth")


def _run(*args, opts=()):
    argv = ["--config-file", TINY_CONFIG, *map(str, args), "--opts", *NO_DATASETS, *map(str, opts)]
    return demo.segment_images(argv)


def _error(*args, opts=()):
    with pytest.raises(SystemExit) as info:
        _run(*args, opts=opts)
    assert isinstance(info.value.code, str), "the demo must exit with the error text"
    assert info.value.code.startswith("esc-net-demo: error: ")
    return info.value.code


def test_folder_input_writes_overlay_labels_and_scores(images, weights, tmp_path):
    out = tmp_path / "out"
    overlays = _run(
        "--input",
        images,
        "--output",
        out,
        "--vocabulary",
        "red circle; blue square; sofa, couch",
        "--save-labels",
        "--save-scores",
        opts=["MODEL.WEIGHTS", weights],
    )
    assert sorted(os.path.basename(p) for p in overlays) == ["a_overlay.png", "b_overlay.png", "c_overlay.png"]
    assert (out / "vocabulary.txt").read_text() == "0\tred circle\n1\tblue square\n2\tsofa, couch\n"

    predictor = ESCNetPredictor(tiny_cfg("MODEL.WEIGHTS", weights))
    predictor.set_vocabulary(["red circle", "blue square", "sofa, couch"])
    for name, (h, w) in SIZES.items():
        stem = os.path.splitext(name)[0]
        overlay = cv2.imread(str(out / f"{stem}_overlay.png"), cv2.IMREAD_UNCHANGED)
        # Small images are drawn enlarged (longer side 512) with the aspect ratio kept.
        assert overlay.dtype == np.uint8 and overlay.shape[2] == 3
        assert max(overlay.shape[:2]) == demo.MIN_OVERLAY_SIDE
        assert abs(overlay.shape[0] / overlay.shape[1] - h / w) < 0.05
        labels = cv2.imread(str(out / f"{stem}_labels.png"), cv2.IMREAD_UNCHANGED)
        assert labels.dtype == np.uint8 and labels.shape == (h, w) and labels.max() < 3
        scores = np.load(out / f"{stem}_scores.npy")
        assert scores.dtype == np.float16 and scores.shape == (3, h, w)
        assert scores.min() >= 0 and scores.max() <= 1
        # The demo used the given weights: its scores are the predictor's (up to float16 rounding).
        expected = predictor(cv2.imread(str(images / name)))["sem_seg"].numpy()
        np.testing.assert_allclose(scores.astype(np.float32), expected, atol=2e-3)
        np.testing.assert_array_equal(labels, expected.argmax(axis=0))


def test_glob_input_and_vocabulary_file(images, tmp_path):
    vocabulary = tmp_path / "classes.txt"
    vocabulary.write_text("# shapes\nred circle\n\n  green triangle \nsky, heaven\n")
    out = tmp_path / "out"
    _run("--input", str(images / "*.png"), "--output", out, "--vocabulary-file", vocabulary)
    assert sorted(os.listdir(out)) == ["a_overlay.png", "b_overlay.png", "vocabulary.txt"]
    assert (out / "vocabulary.txt").read_text() == "0\tred circle\n1\tgreen triangle\n2\tsky, heaven\n"


def test_dataset_vocabulary_and_repeated_vocabulary_options(images, tmp_path):
    name = "demo_test_dataset"
    MetadataCatalog.get(name).set(stuff_classes=["sky", "grass"], stuff_colors=[[0, 0, 255], [0, 255, 0]])
    _run("--input", images / "a.png", "--output", tmp_path / "d", "--dataset-vocabulary", name)
    assert (tmp_path / "d" / "vocabulary.txt").read_text() == "0\tsky\n1\tgrass\n"
    _run(
        "--input",
        images / "a.png",
        "--output",
        tmp_path / "v",
        "--vocabulary",
        "cat; dog",
        "--vocabulary",
        "sofa, couch;",
    )
    assert (tmp_path / "v" / "vocabulary.txt").read_text() == "0\tcat\n1\tdog\n2\tsofa, couch\n"


def test_labels_are_uint16_above_255_classes(images, tmp_path):
    vocabulary = tmp_path / "many.txt"
    vocabulary.write_text("".join(f"class {i}\n" for i in range(300)))
    out = tmp_path / "out"
    _run("--input", images / "a.png", "--output", out, "--vocabulary-file", vocabulary, "--save-labels")
    labels = cv2.imread(str(out / "a_labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.dtype == np.uint16 and labels.shape == SIZES["a.png"] and labels.max() < 300


def test_input_errors_name_the_file(images, tmp_path):
    missing = tmp_path / "missing.png"
    assert f"input image not found: {missing}" in _error("--input", missing, "--output", tmp_path, "--vocabulary", "a")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    assert "holds no image file" in _error("--input", empty, "--output", tmp_path, "--vocabulary", "a")
    assert "matches no file" in _error("--input", str(images / "*.gif"), "--output", tmp_path, "--vocabulary", "a")
    broken = tmp_path / "broken.png"
    broken.write_text("this is not a PNG")
    message = _error("--input", broken, "--output", tmp_path / "out", "--vocabulary", "a")
    assert f"cannot read the image {broken}" in message


def test_vocabulary_errors(images, tmp_path):
    args = ("--input", images / "a.png", "--output", tmp_path)
    assert "the vocabulary is empty" in _error(*args, "--vocabulary", " ; ")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n# only a comment\n")
    assert f"{blank} holds no class name" in _error(*args, "--vocabulary-file", blank)
    assert "no_such_dataset" in _error(*args, "--dataset-vocabulary", "no_such_dataset")
    # Neither an option nor a DATASETS.TEST to take the vocabulary from.
    assert "no vocabulary" in _error(*args)


def test_weights_and_config_errors(images, weights, tmp_path):
    args = ("--input", images / "a.png", "--output", tmp_path, "--vocabulary", "a; b")
    # A checkpoint of a model with another config: the message lists the mis-shaped keys.
    other = tmp_path / "other"
    other.mkdir()
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(tiny_cfg("MODEL.ESC_NET.HIDDEN_DIM", 16)), save_dir=str(other)).save("m")
    message = _error(*args, opts=["MODEL.WEIGHTS", other / "m.pth"])
    assert "do not fit" in message and "corr_embed.weight" in message
    assert "model weights not found" in _error(*args, opts=["MODEL.WEIGHTS", tmp_path / "none.pth"])
    assert "Non-existent key: MODEL.NO_SUCH_KEY" in _error(*args, opts=["MODEL.NO_SUCH_KEY", 1])


@pytest.mark.slow
def test_cli_exits_with_message_and_no_traceback(tmp_path):
    missing = tmp_path / "missing.png"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO_ROOT, "demo", "demo.py"),
            "--config-file",
            TINY_CONFIG,
            "--input",
            str(missing),
            "--output",
            str(tmp_path),
            "--vocabulary",
            "cat",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 1
    assert f"demo.py: error: input image not found: {missing}" in result.stderr
    assert "Traceback" not in result.stderr


def test_truncated_jpeg_and_bad_vocabulary_names_are_refused(images, tmp_path):
    whole = (images / "c.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    # with an end-of-image marker appended, the cut is invisible at the end of the file
    marked = tmp_path / "marked.jpg"
    marked.write_bytes(whole[: len(whole) * 2 // 3] + b"\xff\xd9")
    for path in (cut, marked):
        assert cv2.imread(str(path)) is not None  # OpenCV decodes it partially, without an error
        message = _error("--input", path, "--output", tmp_path / "out", "--vocabulary", "a; b")
        assert f"the JPEG {path} is damaged or truncated" in message
    args = ("--input", images / "a.png", "--output", tmp_path / "out")
    assert "without any synonym" in _error(*args, "--vocabulary", " , ; cat")
    assert "repeats class names" in _error(*args, "--vocabulary", "cat; dog; Cat")
    assert "--save-top-k must be between 0 and the 2 classes" in _error(
        *args, "--vocabulary", "a; b", "--save-top-k", 3
    )


def test_labels_and_top_k_without_full_scores(images, weights, tmp_path):
    out = tmp_path / "out"
    _run(
        "--input",
        images / "b.png",
        "--output",
        out,
        "--vocabulary",
        "red circle; blue square; sofa, couch",
        "--save-labels",
        "--save-top-k",
        2,
        opts=["MODEL.WEIGHTS", weights],
    )
    predictor = ESCNetPredictor(tiny_cfg("MODEL.WEIGHTS", weights))
    predictor.set_vocabulary(["red circle", "blue square", "sofa, couch"])
    scores = predictor(cv2.imread(str(images / "b.png")))["sem_seg"]
    labels = cv2.imread(str(out / "b_labels.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(labels, scores.argmax(dim=0).numpy())
    top = np.load(out / "b_top2.npz")
    assert top["labels"].shape == (2, *SIZES["b.png"]) and top["scores"].dtype == np.float16
    np.testing.assert_array_equal(top["labels"], scores.topk(2, dim=0).indices.numpy())


@pytest.mark.parametrize("classes", [3, 300])  # uint8 and 16-bit label maps
def test_the_top_k_files_are_the_model_outputs_themselves(images, weights, classes):
    """--save-top-k holds K x H x W labels and scores at the image's size: the arrays written are the model's own
    (the uint16 of the files read from the model's int16 without a copy), not copies of them."""
    predictor = ESCNetPredictor(tiny_cfg("MODEL.WEIGHTS", weights))
    predictor.set_vocabulary([f"class {i}" for i in range(classes)])
    outputs = {}

    class Recorder:
        vocabulary = predictor.vocabulary

        def __call__(self, *args, **kwargs):
            outputs.update(predictor(*args, **kwargs))
            return outputs

    args = demo.parse_args(["--config-file", TINY_CONFIG, "--input", "-", "--output", "-", "--save-top-k", "3"])
    labels, _, top = demo.segment(Recorder(), cv2.imread(str(images / "b.png")), args)
    dtype = np.uint8 if classes <= 255 else np.uint16
    assert labels.dtype == top["labels"].dtype == dtype and top["labels"].shape == (3, *SIZES["b.png"])
    for written, output in ((labels, "sem_seg_labels"), (top["labels"], "sem_seg_topk_labels")):
        model = outputs[output].numpy()
        assert np.shares_memory(written, model) and (written.astype(np.int64) == model).all()
    assert np.shares_memory(top["scores"], outputs["sem_seg_topk_scores"].numpy())


def test_the_top_k_is_written_and_let_go_before_the_overlay_is_drawn(images, weights, tmp_path, monkeypatch):
    """The K x H x W top-k at the image's size and the overlay's drawing are never in memory at the same time."""
    predictor = ESCNetPredictor(tiny_cfg("MODEL.WEIGHTS", weights))
    predictor.set_vocabulary(["red circle", "blue square", "sofa, couch"])
    arrays, drawn = [], []
    segment = demo.segment

    def recording_segment(*args):
        labels, scores, top = segment(*args)
        arrays.extend(weakref.ref(top[key]) for key in ("labels", "scores"))
        return labels, scores, top

    def draw(*args, **kwargs):
        gc.collect()
        drawn.append(([ref() is None for ref in arrays], (tmp_path / "b_top2.npz").is_file()))
        return np.zeros((8, 8, 3), np.uint8)

    monkeypatch.setattr(demo, "segment", recording_segment)
    monkeypatch.setattr(demo, "draw_overlay", draw)
    args = demo.parse_args(
        ["--config-file", TINY_CONFIG, "--input", "-", "--output", str(tmp_path), "--save-top-k", "2"]
    )
    demo.segment_file(predictor, str(images / "b.png"), args, predictor.metadata)
    assert drawn == [([True, True], True)]


def test_main_returns_none_for_the_console_script(images, weights, tmp_path):
    """esc-net-demo's console script exits with what main returns: None (status 0) after a successful run."""
    argv = [
        "--config-file",
        TINY_CONFIG,
        "--input",
        str(images / "a.png"),
        "--output",
        str(tmp_path),
        "--vocabulary",
        "cat; dog",
        "--opts",
        *NO_DATASETS,
        "MODEL.WEIGHTS",
        weights,
    ]
    assert demo.main(argv) is None
    assert (tmp_path / "a_overlay.png").is_file()


def test_large_images_are_refused_before_decoding_unless_the_limits_are_raised(weights, tmp_path):
    large = tmp_path / "large.png"
    Image.new("1", (5000, 1200)).save(large, optimize=True)  # a few KB; 18 MB decoded
    args = ("--input", large, "--output", tmp_path / "out", "--vocabulary", "a; b")
    message = _error(*args)
    assert f"{large} is 5000x1200 pixels; the limits are sides up to 4096 pixels" in message
    assert "raise them with --max-side / --max-pixels" in message
    huge = tmp_path / "huge.png"  # a header beyond OpenCV's own ceiling: refused, not a cv2.error
    data = bytearray(cv2.imencode(".png", np.zeros((1, 1), np.uint8))[1].tobytes())
    data[16:24] = (40000).to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    huge.write_bytes(bytes(data))
    assert f"{huge} is too large to decode" in _error(
        "--input", huge, "--output", tmp_path / "out", "--vocabulary", "a"
    )
    # raised limits: the overlay is drawn at --display-side, the saved labels are at the image's size
    _run(*args, "--max-side", 5000, "--display-side", 600, "--save-labels", opts=["MODEL.WEIGHTS", weights])
    assert cv2.imread(str(tmp_path / "out" / "large_overlay.png")).shape == (144, 600, 3)
    assert cv2.imread(str(tmp_path / "out" / "large_labels.png"), cv2.IMREAD_UNCHANGED).shape == (1200, 5000)


def test_without_full_size_files_the_model_predicts_at_the_display_size(images, weights, tmp_path):
    """The overlay of a large image without --save-* comes from labels at its display size; it matches the
    overlay drawn from the full-size labels up to the pixels where the two label maps sample differently."""
    image = np.random.default_rng(0).integers(0, 256, (900, 1200, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    assert cv2.imwrite(str(path), image)
    _run(
        "--input",
        path,
        "--output",
        tmp_path / "a",
        "--vocabulary",
        "a; b; c",
        "--display-side",
        600,
        opts=["MODEL.WEIGHTS", weights],
    )
    _run(
        "--input",
        path,
        "--output",
        tmp_path / "b",
        "--vocabulary",
        "a; b; c",
        "--display-side",
        600,
        "--save-labels",
        opts=["MODEL.WEIGHTS", weights],
    )
    small, large = (cv2.imread(str(tmp_path / d / "photo_overlay.png")) for d in "ab")
    assert small.shape == large.shape == (450, 600, 3)
    assert (small != large).any(axis=2).mean() < 0.05
