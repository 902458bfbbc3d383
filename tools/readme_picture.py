#!/usr/bin/env python
"""The README's picture of what the model does: the web page segmenting an image of names its training never saw.

The page is the web demo's (``esc_net.demo.web``, the same code as ``demo/app.py``) on its first example, a held-out
image of the laboratory's world with the names of its unseen objects, with the score map of one class. With
Debian's Chromium and its driver installed, the picture is a screenshot of the page in a headless browser; without
them, the page's results composed into one picture (the image, the demo's overlay, the score map and the legend).
Either way a small PNG (at most --width pixels wide).

    # the embedded default, trained by scripts/run_default.sh
    python tools/readme_picture.py --output docs/images/readme.png
    python tools/readme_picture.py --config-file configs/esc_net_vitb_384.yaml --image photo.jpg \\
        --vocabulary "cat; sofa, couch; floor" --score-class cat --opts MODEL.WEIGHTS model_final.pth
"""

import argparse
import os
import sys
import tempfile
from typing import List, Optional, Sequence, Tuple

# isort: off
from esc_net import add_esc_net_config  # noqa: F401  first: it imports fvcore without its deprecation noise

# isort: on
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from esc_net.config import add_opts_argument  # noqa: E402
from esc_net.demo import web  # noqa: E402
from esc_net.demo.browser import headless_chromium, missing_browser  # noqa: E402
from esc_net.predictor import ESCNetPredictor  # noqa: E402

# The legend under the composed picture: the classes with most pixels (colour, name, share), in columns.
_LEGEND_ROW, _LEGEND_CLASSES, _LEGEND_COLUMNS = 22, 8, 4


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config-file", default=web.DEFAULT_CONFIG, metavar="FILE", help="an ESC-Net config (the embedded default)"
    )
    parser.add_argument("--image", help="the image to segment (default: the page's first example)")
    parser.add_argument("--vocabulary", help="classes separated by ';' (default: the example's names)")
    parser.add_argument("--score-class", help="the class whose score map is shown (default: the first one present)")
    parser.add_argument("--output", default="docs/images/readme.png", help="the PNG to write")
    parser.add_argument("--width", type=int, default=960, help="the picture's width at most, in pixels")
    parser.add_argument("--composed", action="store_true", help="compose the page's results even with a browser")
    parser.add_argument("--port", type=int, default=0, help="the page's port for the screenshot (0: a free one)")
    add_opts_argument(parser)
    return parser.parse_args(argv)


def _page_args(args: argparse.Namespace, port: int) -> argparse.Namespace:
    opts = list(args.opts)
    if args.config_file == web.DEFAULT_CONFIG and "MODEL.WEIGHTS" not in opts[::2]:
        opts = ["MODEL.WEIGHTS", web.DEFAULT_WEIGHTS] + opts
    return web.parse_args(["--config-file", args.config_file, "--port", str(port), "--opts", *opts])


def _inputs(args: argparse.Namespace, folder: str) -> Tuple[str, str]:
    """The image path and the vocabulary text: the given ones, else the page's first example's."""
    path, vocabulary = web.write_examples(folder)[0]
    return args.image or path, args.vocabulary or vocabulary


def _score_class(segmenter: web.Segmenter, image: str, vocabulary: str, name: Optional[str]) -> str:
    """``name``, or the first class of the vocabulary that the page's legend shows present (the largest)."""
    if name:
        return name
    _, legend, _ = segmenter({"path": image}, vocabulary, "")
    return legend.split('<td class="legend-name">')[1].split("</td>")[0]


def composed_picture(segmenter: web.Segmenter, image: str, vocabulary: str, score_class: str) -> np.ndarray:
    """The page's results for one request as one picture (BGR): the image, the overlay (the demo's), the score map
    of ``score_class``, all at the overlay's height, and the legend's rows under them."""
    overlay, legend, score_map = segmenter({"path": image}, vocabulary, score_class)
    height = overlay.shape[0]
    source = cv2.imread(image)
    source = cv2.resize(source, (round(source.shape[1] * height / source.shape[0]), height), cv2.INTER_NEAREST)
    top = np.concatenate([source, overlay[:, :, ::-1], score_map[:, :, ::-1]], axis=1)
    rows = _legend_rows(legend, segmenter.metadata(segmenter.vocabulary(vocabulary)))
    shown, column_width = rows[:_LEGEND_CLASSES], top.shape[1] // _LEGEND_COLUMNS
    lines = 1 + -(-len(shown) // _LEGEND_COLUMNS)
    strip = np.full((_LEGEND_ROW * lines + 6, top.shape[1], 3), 255, np.uint8)
    more = f" ({len(rows) - len(shown)} more classes present)" if len(rows) > len(shown) else ""
    header = f"{len(rows)} classes present, most pixels first{more}; score map: {score_class}"
    cv2.putText(strip, header, (8, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (name, share, color) in enumerate(shown):
        x, y = 8 + (i % _LEGEND_COLUMNS) * column_width, (1 + i // _LEGEND_COLUMNS) * _LEGEND_ROW
        cv2.rectangle(strip, (x, y + 4), (x + 16, y + 18), tuple(int(c) for c in color[::-1]), -1)
        text = f"{name}  {share}"
        cv2.putText(strip, text, (x + 24, y + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([top, strip], axis=0)


def _legend_rows(legend: str, metadata) -> List[Tuple[str, str, Sequence[int]]]:
    """(name, share, RGB colour) of the legend's rows, in its order."""
    rows = []
    for part in legend.split('<td class="legend-name">')[1:]:
        name = part.split("</td>")[0]
        share = part.split('<td class="legend-share">')[1].split("</td>")[0]
        rows.append((name, share, metadata.stuff_colors[metadata.stuff_classes.index(name)]))
    return rows


def page_screenshot(args: argparse.Namespace, image: str, vocabulary: str, score_class: str) -> np.ndarray:
    """A screenshot (BGR) of the web page in headless Chromium, once it shows the request's results."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = args.port or _free_port()
    app, launch = web.create(_page_args(args, port))
    app.launch(prevent_thread_lock=True, quiet=True, **launch)
    browser = headless_chromium(window=(1280, 1000))
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 120)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(os.path.abspath(image))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#image img"))
        for element, text in (("#vocabulary textarea", vocabulary), ("#score-class textarea", score_class)):
            field = browser.find_element(By.CSS_SELECTOR, element)
            field.clear()
            field.send_keys(text)
        browser.find_element(By.CSS_SELECTOR, "#segment").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#legend .legend-name"))
        wait.until(lambda b: b.execute_script("return document.querySelector('#score-map img')?.complete"))
        png = browser.get_screenshot_as_png()
    finally:
        browser.quit()
        app.close()
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_small_png(path: str, picture: np.ndarray, width: int) -> None:
    """``picture`` (BGR) at ``width`` pixels at most, as a PNG of 128 colours (a README's picture needs no more)."""
    if picture.shape[1] > width:
        height = round(picture.shape[0] * width / picture.shape[1])
        picture = cv2.resize(picture, (width, height), interpolation=cv2.INTER_AREA)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(picture[:, :, ::-1]).quantize(colors=128).save(path, optimize=True)


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Writes the picture; returns how it was made ("screenshot" or "composed")."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        image, vocabulary = _inputs(args, folder)
        cfg = web.setup_cfg(_page_args(args, args.port))
        segmenter = web.Segmenter(ESCNetPredictor(cfg), colors=web.palette(cfg))  # as the page draws
        score_class = _score_class(segmenter, image, vocabulary, args.score_class)
        missing = missing_browser()
        if args.composed or missing:
            if missing:
                print(f"readme_picture: no browser ({missing} is not installed): composing the page's results")
            picture, made = composed_picture(segmenter, image, vocabulary, score_class), "composed"
        else:
            picture, made = page_screenshot(args, image, vocabulary, score_class), "screenshot"
    write_small_png(args.output, picture, args.width)
    print(f"readme_picture: wrote {args.output} ({made}, {os.path.getsize(args.output) // 1024} KB)")
    return made


if __name__ == "__main__":
    sys.exit(main() and 0)
