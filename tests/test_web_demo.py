"""The web demo (esc-net-web-demo, demo/app.py), a Gradio page: over HTTP with gradio_client, and in a real headless
Chromium (Selenium).

Every server here listens on 127.0.0.1 and serves a tiny random-weight checkpoint written by the test.
"""

import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import cv2
import httpx
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from conftest import REPO_ROOT, TINY_CONFIG, free_port, tiny_cfg
from esc_net.demo import web as app_module
from esc_net.demo.browser import headless_chromium, missing_browser
from esc_net.demo.images import ImageLimits
from esc_net.predictor import ESCNetPredictor

pytestmark = pytest.mark.slow  # serves the page (and drives a browser)

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download a browser or a driver

gradio_client = pytest.importorskip("gradio_client", reason="the web demo needs gradio (pip install -e .[web])")

MAX_SIDE = 300
MAX_UPLOAD_MB = 0.2
VOCABULARY = "red square; black background"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web")
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(tiny_cfg()), save_dir=str(folder)).save("model")
    image = np.zeros((80, 100, 3), np.uint8)
    image[10:50, 10:50] = (0, 0, 220)  # BGR red
    assert cv2.imwrite(str(folder / "square.png"), image)
    assert cv2.imwrite(str(folder / "too_wide.png"), np.zeros((20, MAX_SIDE + 1, 3), np.uint8))
    (folder / "not_an_image.png").write_text("this is text")
    (folder / "too_big.png").write_bytes(os.urandom(int(MAX_UPLOAD_MB * 2**20) + 1000))
    Image.new("1", (2000, 2000)).save(folder / "bomb.png", optimize=True)  # 1 KB, 12 MB decoded
    whole = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))[1].tobytes()
    (folder / "cut.jpg").write_bytes(whole[: len(whole) // 2] + b"\xff\xd9")  # cut, then an end marker
    return folder


class Page(NamedTuple):
    url: str
    folder: str  # the folder created for the server's files


@pytest.fixture(scope="module")
def page(files):
    """The page on 127.0.0.1 with the test checkpoint."""
    port = free_port()
    args = app_module.parse_args(
        [
            "--config-file",
            TINY_CONFIG,
            "--port",
            str(port),
            "--max-side",
            str(MAX_SIDE),
            "--max-upload-mb",
            str(MAX_UPLOAD_MB),
            "--opts",
            "DATASETS.TRAIN",
            "()",
            "DATASETS.TEST",
            "()",
            "MODEL.WEIGHTS",
            str(files / "model.pth"),
        ]
    )
    app, launch = app_module.create(args)
    assert launch["server_name"] == "127.0.0.1"
    folder = os.environ["GRADIO_TEMP_DIR"]
    app.launch(prevent_thread_lock=True, quiet=True, **launch)
    yield Page(f"http://127.0.0.1:{port}/", folder)
    app.close()


@pytest.fixture(scope="module")
def server(page):
    return page.url


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server, verbose=False)


def _segment(client, path, vocabulary=VOCABULARY, score_class=""):
    return client.predict(gradio_client.handle_file(str(path)), vocabulary, score_class, api_name="/segment")


def _legend_classes(legend_html):
    names = [part.split("</td>")[0] for part in legend_html.split('<td class="legend-name">')[1:]]
    shares = [float(part.split("%")[0]) for part in legend_html.split('<td class="legend-share">')[1:]]
    return names, shares


def test_localhost_by_default():
    args = app_module.parse_args([])
    assert args.host == "127.0.0.1"


def test_http_segmentation(client, files):
    overlay, legend, score_map = _segment(client, files / "square.png", score_class="red square")
    picture = cv2.imread(overlay)
    # drawn enlarged to a longer side of 512 (the demo's overlay), aspect ratio kept
    assert picture is not None and max(picture.shape[:2]) == 512 and picture.shape[1] > picture.shape[0]
    names, shares = _legend_classes(legend)
    assert set(names) <= {"red square", "black background"} and names
    assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(100, abs=0.2)
    heat = cv2.imread(score_map)
    # beside the overlay at its size, with the colour bar at its right
    assert heat is not None and heat.shape[:2] == (picture.shape[0], picture.shape[1] + app_module.COLOR_BAR_WIDTH)
    _, _, no_map = _segment(client, files / "square.png")
    assert no_map is None


def test_score_map_is_drawn_at_the_given_size_with_a_colour_bar():
    image = np.zeros((6, 8, 3), np.uint8)
    scores = np.zeros((6, 8), np.float32)
    scores[:, 4:] = 1.0  # right half certain
    drawn = app_module.draw_score_map(image, scores, (384, 512))[:, :, ::-1]  # back to BGR
    assert drawn.shape == (384, 512 + app_module.COLOR_BAR_WIDTH, 3)
    viridis = cv2.applyColorMap(np.array([[0, 255]], np.uint8), cv2.COLORMAP_VIRIDIS)[0].astype(int)  # 0, 1
    dark = (0.65 * viridis).round()  # over a black image
    assert np.abs(drawn[200, 100].astype(int) - dark[0]).max() <= 2
    assert np.abs(drawn[200, 400].astype(int) - dark[1]).max() <= 2
    bar = drawn[:, 512:]
    strip = bar[:, 4:18].reshape(-1, 3)
    # the bar runs from the colour of 1 at the top to that of 0 at the bottom
    assert np.abs(bar[9, 10].astype(int) - viridis[1]).max() <= 2
    assert np.abs(bar[384 - 9, 10].astype(int) - viridis[0]).max() <= 2
    assert len({tuple(c) for c in strip}) > 100


def test_class_colours_are_the_names_whatever_the_vocabulary():
    """The embedded default's page draws a vocabulary that is not its dataset's with the dataset's colours for the
    names it has (grey stripes, blue circle in blue) and a colour per name for the others."""
    shapes = MetadataCatalog.get("synthetic_shapes_val")
    segmenter = app_module.Segmenter(predictor=None, colors=shapes)
    small = segmenter.metadata(["stripes", "blue circle"]).stuff_colors
    large = segmenter.metadata(["red square", "sky", "blue circle", "stripes"]).stuff_colors
    blue = shapes.stuff_colors[shapes.stuff_classes.index("blue circle")]
    assert small == [large[3], large[2]] == [shapes.stuff_colors[0], blue]
    assert large[1] == app_module.Segmenter(None).metadata(["grass", "sky"]).stuff_colors[1]


def test_user_errors_are_logged_in_one_line_without_a_traceback(client, files, capfd):
    logger = logging.getLogger("esc_net.web_demo")
    records, handler, level = [], logging.Handler(logging.INFO), logger.level
    handler.emit = records.append
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    capfd.readouterr()
    try:
        with pytest.raises(gradio_client.exceptions.AppError):
            _segment(client, files / "square.png", " ; ")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err + printed.out
    assert [r.getMessage() for r in records] == [
        "refused a request: The vocabulary is empty: type class names separated by ';' (e.g. 'cat; sofa, couch')."
    ]


def test_a_taken_port_names_the_port_option(files):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(SystemExit) as info:
            app_module.main(
                [
                    "--config-file",
                    TINY_CONFIG,
                    "--port",
                    str(port),
                    "--opts",
                    "DATASETS.TRAIN",
                    "()",
                    "DATASETS.TEST",
                    "()",
                    "MODEL.WEIGHTS",
                    str(files / "model.pth"),
                ]
            )
    message = str(info.value.code)
    assert message.startswith("esc-net-web-demo: error: cannot listen on 127.0.0.1:") and str(port) in message
    assert "choose another port with --port" in message and "GRADIO_SERVER_PORT" not in message


@pytest.mark.parametrize(
    "upload, vocabulary, score_class, message",
    [
        ("square.png", " ; ", "", "The vocabulary is empty"),
        ("not_an_image.png", VOCABULARY, "", "The upload 'not_an_image.png' is not an image"),
        ("too_wide.png", VOCABULARY, "", f"sides up to {MAX_SIDE} pixels"),
        ("bomb.png", VOCABULARY, "", f"The upload bomb.png is 2000x2000 pixels; the limits are sides up to {MAX_SIDE}"),
        ("cut.jpg", VOCABULARY, "", "The upload 'cut.jpg' is not an image that can be read whole"),
        (
            "square.png",
            "cat; dog; Cat",
            "",
            "The vocabulary repeats class names (their scores would be identical): 'Cat' at 0 and 2",
        ),
        ("square.png", VOCABULARY, "dog", "'dog' is not a class of the vocabulary (red square, black background)"),
        (
            "square.png",
            "cat; " + "x" * 400,
            "",
            "has 400 characters; at most 300 are accepted: shorten it (the server's --max-name-chars sets this limit)",
        ),
        (
            "square.png",
            "<b>cat</b>; <B>CAT</B>",
            "",
            "repeats class names (their scores would be identical): '&lt;B&gt;",
        ),
    ],
)
def test_http_errors_are_messages(client, files, upload, vocabulary, score_class, message):
    with pytest.raises(gradio_client.exceptions.AppError) as error:
        _segment(client, files / upload, vocabulary, score_class)
    assert message in str(error.value)
    assert "Traceback" not in str(error.value)


def test_upload_size_limit(client, server, files):
    # the page tells its clients the limit (the browser and gradio_client refuse before sending) ...
    with pytest.raises(ValueError, match="exceeds the maximum file size of 209715 bytes"):
        _segment(client, files / "too_big.png")
    # ... and the server refuses a bigger upload from a client that sends it anyway
    with open(files / "too_big.png", "rb") as f:
        response = httpx.post(server + "gradio_api/upload", files={"files": ("too_big.png", f, "image/png")})
    assert response.status_code == 413 and "maximum allowed size of 209715 bytes" in response.text


def test_two_clients_at_once(server, files):
    """Two browsers with different vocabularies at the same time each get their own classes."""
    vocabularies = ["red square; black background", "blue sky; green grass; brown dirt"]
    clients = [gradio_client.Client(server, verbose=False) for _ in vocabularies]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda cv: _segment(cv[0], files / "square.png", cv[1]), zip(clients, vocabularies)))
    for vocabulary, (_, legend, _) in zip(vocabularies, results):
        names, _ = _legend_classes(legend)
        assert names and set(names) <= {v.strip() for v in vocabulary.split(";")}


def test_no_arguments_serves_the_trained_default_the_model_zoo_ships():
    """`python demo/app.py` on a fresh clone starts from the shipped trained default, without training anything."""
    app, launch = app_module.create(app_module.parse_args([]))
    assert app_module.DEFAULT_WEIGHTS == os.path.join(REPO_ROOT, "model_zoo", "esc_net_tiny_shapes.pth")
    assert "esc_net_tiny_shapes.pth" in json.dumps(app.config)  # the page names the weights it serves, by file name


def test_a_second_page_in_the_same_process_leaves_the_first_one_working(page, client, files):
    """Gradio looks up its upload folder (GRADIO_TEMP_DIR) each time it accepts an upload: a second page built in
    the same process shares the first one's private folder, so uploads to the first page are still accepted."""
    args = app_module.parse_args(
        ["--config-file", TINY_CONFIG, "--port", str(free_port()), "--opts", "MODEL.WEIGHTS", str(files / "model.pth")]
    )
    app_module.create(args)
    _, legend, _ = _segment(client, files / "square.png")
    assert _legend_classes(legend)[0]


def test_the_page_keeps_its_files_private_and_shows_no_server_path(page, files):
    mode = os.stat(page.folder)
    assert stat.S_IMODE(mode.st_mode) == 0o700 and mode.st_uid == os.getuid()
    assert sorted(os.listdir(page.folder))[:1] and "shapes_0.png" in os.listdir(page.folder)
    config = httpx.get(page.url + "config").text
    assert "model.pth" in config
    for path in (str(files), REPO_ROOT, TINY_CONFIG):
        assert path not in config
    served = re.findall(r"/gradio_api/file=([^\"]+)", config)  # the examples, as Gradio serves them
    assert served and all(p.startswith(page.folder + os.sep) for p in served)


def _start_page(files, parent, log):
    """The page's command in a process of its own, with its private folder in ``parent``, once it serves."""
    port = free_port()
    command = [sys.executable, os.path.join(REPO_ROOT, "demo", "app.py"), "--config-file", TINY_CONFIG]
    command += ["--port", str(port), "--opts", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]
    command += ["MODEL.WEIGHTS", str(files / "model.pth")]
    env = dict(os.environ, GRADIO_TEMP_DIR=str(parent))
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300  # a bound for a stuck start, not a measurement
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(url).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.5)
    process.kill()
    raise AssertionError(f"the page did not start (exit status {process.wait()}); see {log.name}")


def _private_folders(parent):
    return sorted(p for p in parent.iterdir() if p.name.startswith(app_module.FOLDER_PREFIX))


def test_a_stopped_or_killed_server_leaves_no_upload_behind(files, tmp_path):
    """SIGTERM stops the page as Ctrl-C does, removing its folder and the uploads in it; the folder of a page
    killed with SIGKILL (no handler runs) is removed when the next page of this user starts."""
    parent = tmp_path / "temp"
    parent.mkdir()
    with open(tmp_path / "server.log", "w") as log:
        process, url = _start_page(files, parent, log)
        with open(files / "square.png", "rb") as f:
            response = httpx.post(url + "gradio_api/upload", files={"files": ("square.png", f, "image/png")})
        (folder,) = _private_folders(parent)
        uploaded = response.json()[0]
        assert uploaded.startswith(str(folder) + os.sep) and os.path.isfile(uploaded)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
        assert _private_folders(parent) == []

        killed, _ = _start_page(files, parent, log)
        (stale,) = _private_folders(parent)
        killed.kill()
        killed.wait()
        assert stale.is_dir()  # no handler ran
        process, _ = _start_page(files, parent, log)  # at once, as a service manager restarts a killed server
        try:
            (folder,) = _private_folders(parent)
            assert folder != stale
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
    assert _private_folders(parent) == []
    assert f"removed {stale}, the folder of a page that was killed" in (tmp_path / "server.log").read_text()


def test_a_large_image_is_drawn_at_the_display_size(files, tmp_path):
    """The model predicts at the display size; the overlay and the score map are drawn at it."""
    predictor = ESCNetPredictor(tiny_cfg("MODEL.WEIGHTS", str(files / "model.pth")))
    segmenter = app_module.Segmenter(predictor, ImageLimits(), display_side=600)
    image = np.random.default_rng(0).integers(0, 256, (1000, 1500, 3), dtype=np.uint8)
    assert cv2.imwrite(str(tmp_path / "large.png"), image)
    vocabulary = "; ".join(f"class {i}" for i in range(30))
    overlay, legend, score_map = segmenter({"path": str(tmp_path / "large.png")}, vocabulary, "class 3")
    assert overlay.shape == (400, 600, 3) and score_map.shape == (400, 600 + app_module.COLOR_BAR_WIDTH, 3)
    names, shares = _legend_classes(legend)
    assert names and sum(shares) == pytest.approx(100, abs=0.5)


def test_the_score_map_is_the_class_score_among_the_top_k(files):
    predictor = ESCNetPredictor(tiny_cfg("MODEL.WEIGHTS", str(files / "model.pth")))
    predictor.set_vocabulary([f"class {i}" for i in range(12)])
    image = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    scores = predictor(image)["sem_seg"].numpy()
    result = predictor(image, output="labels", top_k=app_module.SCORE_MAP_TOP_K)
    shown = app_module.class_scores(result, 7)
    in_top = (result["sem_seg_topk_labels"].numpy() == 7).any(axis=0)
    assert in_top.any() and not in_top.all()
    np.testing.assert_allclose(shown[in_top], scores[7][in_top], atol=1e-3)  # float16 top-k scores
    assert (shown[~in_top] == 0).all()


# ------------------------------------------------------------------------------------------------------------
# a real browser


def _browser():
    """Headless Debian Chromium driven by Selenium, or a skip saying what is missing."""
    missing = missing_browser()
    if missing:
        pytest.skip(f"no Chromium browser: install {missing} (.ci/run does)")
    return headless_chromium()


def test_in_a_real_browser(server, files):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    try:
        browser.get(server)
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(files / "square.png"))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#image img"))
        vocabulary = browser.find_element(By.CSS_SELECTOR, "#vocabulary textarea")

        # an empty vocabulary: a visible message, no result
        vocabulary.clear()
        vocabulary.send_keys(" ; ")
        browser.find_element(By.CSS_SELECTOR, "#segment").click()
        wait.until(lambda b: "The vocabulary is empty" in b.find_element(By.TAG_NAME, "body").text)
        assert not browser.find_elements(By.CSS_SELECTOR, "#legend .legend-name")

        vocabulary.clear()
        vocabulary.send_keys(VOCABULARY)
        browser.find_element(By.CSS_SELECTOR, "#segment").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#legend .legend-name"))
        names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#legend .legend-name")]
        assert names and set(names) <= {"red square", "black background"}
        overlay = browser.find_element(By.CSS_SELECTOR, "#overlay img")
        wait.until(lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay))
        assert browser.execute_script("return arguments[0].naturalWidth", overlay) == 512
        # everything the page loaded came from this server
        resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert resources and all(r.startswith(server) or r.startswith("data:") for r in resources), resources
    finally:
        browser.quit()


def test_examples_name_unseen_classes(tmp_path):
    """The page's examples are images of the embedded default's world, each with its benchmark's names: the first
    one's are the unseen objects (and the textures), names the model's segmentation training never saw."""
    from esc_net.data import synthetic_shapes as ss

    examples = app_module.write_examples(str(tmp_path))
    assert [os.path.basename(p) for p, _ in examples] == ["shapes_0.png", "shapes_1.png", "shapes_2.png"]
    assert all(cv2.imread(p).shape == (256, 256, 3) for p, _ in examples)
    first = examples[0][1].split("; ")
    assert set(ss.UNSEEN_OBJECTS) <= set(first) and not set(first) & set(ss.SEEN_OBJECTS)
