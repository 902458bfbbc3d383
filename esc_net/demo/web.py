"""A web page for ESC-Net (Gradio): upload an image or pick an example, type a vocabulary, see the segmentation.

The ``esc-net-web-demo`` command (``python demo/app.py`` in a source checkout runs the same code); it needs the
``web`` extra (gradio):

    # the embedded default (the tiny model on the synthetic shapes, as the model zoo ships it trained:
    # model_zoo/esc_net_tiny_shapes.pth; needs a source checkout), on http://127.0.0.1:7860
    esc-net-web-demo

    # any config and weights
    esc-net-web-demo --config-file configs/esc_net_vitb_384.yaml --opts MODEL.WEIGHTS model_final.pth \\
        MODEL.DEVICE cuda

The page takes classes separated by ';' (synonyms of one class by ',': "sofa, couch"), and shows the overlay
(Detectron2's Visualizer; each class in a colour of its name, the same in any vocabulary, grey for background-like
names), a legend of the classes present with their share of the pixels, and, for a class named in "score map
of", that class's scores at the overlay's size with a colour bar. Bad uploads, an empty vocabulary or an unknown
class give a message on the page and one line in the server's log.

It listens on 127.0.0.1 only unless --host says otherwise, on --port (7860; a port that another server holds is
refused, naming --port, before the model loads), refuses uploads over --max-upload-mb, images over --max-side
or --max-pixels (read from the header, before decoding) and vocabularies of more than --max-classes names or
with a name of more than --max-name-chars characters (before the text is tokenised), and serves several browsers
at once: requests queue (up to --queue-size waiting), at most --concurrency run at a time, and the model itself
runs one image at a time (nothing but the prediction holds it). The model predicts at the display size
(--display-side) and the page draws from the label map (and, for a score map, the best classes' scores), so a
request's memory does not grow with the vocabulary or the photo beyond the decoded image. Uploads, examples and
outputs live in a folder created for this server, readable by its owner only, and removed at exit (Ctrl-C,
SIGTERM, SIGHUP); the folder of a server that was killed (SIGKILL) is removed when the next one starts.
"""

import argparse
import atexit
import fcntl
import functools
import html
import logging
import os
import shutil
import signal
import socket
import stat
import tempfile
import threading
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.data.catalog import Metadata
from detectron2.utils.logger import setup_logger

from esc_net.config import add_opts_argument
from esc_net.data import check_vocabulary
from esc_net.data.synthetic_shapes import benchmark, render_split_sample
from esc_net.demo.cli import (
    InputError,
    add_backend_argument,
    add_limit_arguments,
    as_array,
    build_predictor,
    draw_overlay,
    image_limits,
    limit_option,
    palette,
    parse_vocabulary_text,
    setup_cfg,
    vocabulary_limits,
)
from esc_net.demo.images import (
    ImageLimits,
    ImageTooLargeError,
    UnreadableImageError,
    display_size,
    read_image,
    resize_to,
)
from esc_net.predictor import ESCNetPredictor, class_colors, class_index, display_name, vocabulary_metadata
from esc_net_runtime.vocabulary_rules import VocabularyLimitError, VocabularyLimits

logger = logging.getLogger("esc_net.web_demo")

# The embedded default lives in the source checkout around this package (configs/, model_zoo/).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "esc_net_tiny_shapes.yaml")
# the trained default the model zoo ships (docs/model_zoo.md), so that the page starts without training
DEFAULT_WEIGHTS = os.path.join(REPO_ROOT, "model_zoo", "esc_net_tiny_shapes.pth")
# Longest side of the pictures the page shows (--display-side); the model predicts at that size.
DISPLAY_SIDE = 1024
# A score map shows a class's score where it is among the pixel's SCORE_MAP_TOP_K best classes (0 elsewhere): the
# model returns those in bounded memory, where all N classes' scores would take N x h x w floats.
SCORE_MAP_TOP_K = 5
# The command's name in its usage and error messages (demo/app.py passes its own).
PROG = "esc-net-web-demo"


@functools.lru_cache(maxsize=None)
def gradio():
    """The gradio module, imported on first use: importing this module does not need gradio, only the page does.

    Raises:
        InputError: gradio is not installed (it comes with the ``web`` extra).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the page works offline
    try:
        import gradio as gr
    except ImportError as e:
        raise InputError(
            f"the web demo needs gradio, which is not installed ({e}); install the web extra: "
            "pip install 'esc_net[web]' (in a source checkout: pip install -e '.[web]')"
        ) from e
    return gr


def theme():
    """System fonts only: the default theme would fetch its fonts from the web."""
    return gradio().themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )


def parse_args(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file",
        metavar="FILE",
        help="an ESC-Net config (default: the embedded default, configs/esc_net_tiny_shapes.yaml, "
        "with its trained checkpoint)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens the page to the network)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted (MB)")
    add_limit_arguments(parser)
    add_backend_argument(parser)
    parser.add_argument(
        "--display-side",
        type=int,
        default=DISPLAY_SIDE,
        metavar="PIXELS",
        help=f"longest side of the pictures shown; the model predicts at that size (default {DISPLAY_SIDE})",
    )
    parser.add_argument("--concurrency", type=int, default=2, help="requests processed at the same time")
    parser.add_argument("--queue-size", type=int, default=16, help="requests waiting at most; more are refused")
    parser.add_argument("--device", help="run on this device (cpu, cuda); default: the config's MODEL.DEVICE")
    add_opts_argument(parser)
    return parser.parse_args(argv)


# The private folders of pages are named with this prefix (and a random part), in their parent folder.
FOLDER_PREFIX = "esc_net_web_demo_"
# An empty folder younger than this is left alone by another page's clean-up: a page that is creating it locks it
# before it writes anything into it, and may not have locked it yet.
_STALE_AFTER_S = 60


@functools.lru_cache(maxsize=None)
def private_folder() -> str:
    """This process's folder for the pages' files, readable by its owner only (``mkdtemp``: mode 0700), removed at
    exit (the command's SIGTERM and SIGHUP exit as Ctrl-C does, see :func:`main`).

    Gradio keeps uploads, examples and outputs under ``GRADIO_TEMP_DIR`` (by default a ``gradio`` folder in the
    system's temporary folder, shared by every user of the machine); pointing it here keeps them private. A
    ``GRADIO_TEMP_DIR`` already set is the parent of the new folder. Call it before the page is built: Gradio
    reads the variable when its components and its server are created. One folder per process, created on the
    first call: Gradio reads the variable again each time it accepts an upload, so a second folder would make
    the uploads of a page built earlier in the same process look foreign and be refused.

    The folder stays locked (``flock``) while this process lives, and the folders that killed pages of this user
    left in the same parent (no exit handler runs after SIGKILL) are removed first: :func:`remove_stale_folders`.
    """
    parent = os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()
    for stale in remove_stale_folders(parent):
        logger.info(f"removed {stale}, the folder of a page that was killed")
    folder = tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=parent)
    # Held until the process ends, however it ends (the kernel releases it then); taken before anything is written
    # into the folder. Where the file system cannot lock, no other page removes the folder either.
    _try_lock(os.open(folder, os.O_RDONLY))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["GRADIO_TEMP_DIR"] = folder
    return folder


def _try_lock(fd: int) -> bool:
    """Takes an exclusive ``flock`` on the open folder ``fd`` without waiting; False if another holds it (or the
    file system cannot lock)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def remove_stale_folders(parent: str) -> List[str]:
    """Removes the private folders that pages killed without their exit handler (SIGKILL, a crash) left in
    ``parent``, with the uploads in them; returns their paths.

    A folder is removed only if it is a page's (named :data:`FOLDER_PREFIX`..., a folder and not a link), it
    belongs to this user, and no process holds its lock (a running page holds its own until it ends, from before
    it writes anything into it). An empty folder is left alone for a minute: its page may be starting and not
    have locked it yet (and an attempt to lock it here could make that page's own attempt fail).
    """
    removed = []
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if not name.startswith(FOLDER_PREFIX):
            continue
        try:
            info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
            if not os.listdir(path) and time.time() - info.st_mtime < _STALE_AFTER_S:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:  # removed or replaced meanwhile
            continue
        try:
            if _try_lock(fd):  # nobody holds it: its page is gone
                shutil.rmtree(path)
                removed.append(path)
        except OSError as e:  # a file in it that this user cannot remove: the page starts all the same
            logger.warning(f"could not remove {path}, the folder of a page that was killed: {e}")
        finally:
            os.close(fd)
    return removed


# The examples: an image of each zero-shot benchmark of the embedded default's world, with that benchmark's names
# (unseen objects first: the names its segmentation training never saw).
EXAMPLE_SPLITS = ("val_unseen", "val_all", "val")


def write_examples(folder: str) -> List[Tuple[str, str]]:
    """Writes the example images (held-out images of the Synthetic Shapes world, drawn at 256 px) into the existing
    ``folder`` and returns them with the vocabulary text of each: (path, "stripes; checks; ...")."""
    examples = []
    for i, split in enumerate(EXAMPLE_SPLITS):
        path = os.path.join(folder, f"shapes_{i}.png")
        image, _ = render_split_sample(1000, split, i, 256, 3, 0)
        if not cv2.imwrite(path, image[:, :, ::-1]):
            raise OSError(f"could not write the example image {path}")
        examples.append((path, "; ".join(benchmark(split).vocabulary)))
    return examples


def user_error(message: str) -> Exception:
    """A ``gradio.Error`` for a problem the user can fix: the page shows ``message``; the server log gets it as
    one line, not Gradio's traceback.

    Gradio renders an error's message as HTML (sanitised: no script runs, but tags such as ``<img>`` or ``<a>``
    would), and messages quote what the user typed or named: the message is escaped, so that it shows as text.
    """
    logger.info(f"refused a request: {message}")
    return gradio().Error(html.escape(message, quote=False), print_exception=False)


class Segmenter:
    """The page's one action: an image file and a vocabulary text in, overlay, legend and score map out.

    Errors the user can fix raise :func:`user_error` with the reason, which the page shows as a message.
    """

    def __init__(
        self,
        predictor: ESCNetPredictor,
        limits: ImageLimits = ImageLimits(),
        display_side: int = DISPLAY_SIDE,
        colors: Optional[Metadata] = None,
        vocabulary_limits: VocabularyLimits = VocabularyLimits(),
    ):
        """
        Args:
            predictor: the model (ESCNetPredictor, or esc_net_runtime.ONNXPredictor of an exported model); its own
                vocabulary is the page's default.
            limits: the largest image accepted, checked on its header before decoding.
            display_side: longest side of the pictures shown; the model predicts at that size.
            colors: a dataset's metadata whose ``stuff_colors`` draw the classes it has (e.g. grey background);
                the other classes get a colour of their name (:func:`esc_net.predictor.class_colors`).
            vocabulary_limits: the most classes and the longest name accepted, checked before any tokenisation.
        """
        self.predictor = predictor
        self.limits = limits
        self.display_side = display_side
        self.colors = colors
        self.vocabulary_limits = vocabulary_limits
        # One image at a time through the model. Only the prediction holds it: reading the image, checking the
        # vocabulary within its limits and drawing run before and after, so that a request other users wait for
        # holds it for one image's inference (its text encoding included) and no longer.
        self._model_lock = threading.Lock()

    def read(self, upload: Optional[dict]) -> np.ndarray:
        """The uploaded image as [H, W, 3] uint8 BGR. ``upload`` is Gradio's file payload ({"path", "orig_name",
        ...}; the page's image input is not preprocessed, so that an unreadable file gets this message rather
        than Gradio's own)."""
        if not upload:
            raise user_error("Upload an image or pick an example first.")
        path = upload["path"]
        name = upload.get("orig_name") or os.path.basename(path)  # never the server's path
        try:
            return read_image(path, self.limits, name=name)
        except ImageTooLargeError as e:
            raise user_error(f"The upload {e}. Resize it and upload again.") from e
        except UnreadableImageError as e:
            message = (
                f"The upload {name!r} is not an image that can be read whole (PNG, JPEG, BMP, TIFF, WebP; "
                "damaged and truncated files are refused)."
            )
            raise user_error(message) from e

    def vocabulary(self, text: str) -> List[str]:
        """The classes of the vocabulary text, checked (within :attr:`vocabulary_limits` first)."""
        names = parse_vocabulary_text([text or ""])
        if not names:
            raise user_error("The vocabulary is empty: type class names separated by ';' (e.g. 'cat; sofa, couch').")
        try:
            return check_vocabulary(names, self.vocabulary_limits)
        except VocabularyLimitError as e:
            message = str(e)
            raise user_error(
                f"{message[:1].upper() + message[1:]}: shorten it (the server's {limit_option(e)} sets this limit)."
            ) from e
        except ValueError as e:  # a repeated name, a name without synonyms or holding a line break: say which
            message = str(e)
            raise user_error(message[:1].upper() + message[1:] + ".") from e

    def __call__(
        self,
        upload: Optional[dict],
        vocabulary_text: str,
        score_class: str,
        progress: Optional[Callable[..., None]] = None,
    ) -> Tuple[np.ndarray, str, Optional[np.ndarray]]:
        """
        Args:
            upload: Gradio's payload of the image file (see :meth:`read`).
            vocabulary_text: classes separated by ';', synonyms by ','.
            score_class: a class of the vocabulary whose score map to draw, or "".
            progress: called as ``progress(fraction, desc=...)`` at each stage (the page passes Gradio's progress
                bar), or None.

        Returns:
            overlay: [h, w, 3] uint8 RGB (enlarged for small images).
            legend: HTML table of the classes present, most pixels first.
            score map: [h, w + bar, 3] uint8 RGB, the ``score_class`` scores over the image at the overlay's size,
                with a colour bar; or None.
        """
        progress = progress or _no_progress
        progress(0.0, desc="reading the image")
        image = self.read(upload)
        vocabulary = self.vocabulary(vocabulary_text)
        score_index = self._score_index(vocabulary, score_class)
        progress(0.1, desc=f"segmenting into {len(vocabulary)} classes")
        size = display_size(*image.shape[:2], self.display_side)
        top_k = 0 if score_index is None else min(SCORE_MAP_TOP_K, len(vocabulary))
        start = time.perf_counter()
        with self._model_lock:
            result = self.predictor(image, vocabulary, output="labels", top_k=top_k, output_size=size)
        seconds = time.perf_counter() - start
        progress(0.8, desc="drawing")
        labels = as_array(result["sem_seg_labels"])  # [h, w] at the display size
        metadata = self.metadata(vocabulary)
        overlay = draw_overlay(image, labels, metadata, self.display_side)[:, :, ::-1]
        legend = legend_html(labels, metadata, seconds)
        score_map = None
        if score_index is not None:
            score_map = draw_score_map(resize_to(image, size), class_scores(result, score_index), overlay.shape[:2])
        return overlay, legend, score_map

    def metadata(self, vocabulary: Sequence[str]):
        """The Visualizer metadata of ``vocabulary``: every class in the colour of its name."""
        return vocabulary_metadata(vocabulary, class_colors(vocabulary, self.colors))

    @staticmethod
    def _score_index(vocabulary: Sequence[str], name: str) -> Optional[int]:
        name = (name or "").strip()
        if not name:
            return None
        index = class_index(vocabulary, name)
        if index is None:
            shown = ", ".join(display_name(v) for v in vocabulary)
            message = f"'{name}' is not a class of the vocabulary ({shown}): clear 'score map of' or pick one."
            raise user_error(message)
        return index


def _no_progress(fraction: float, desc: str = "") -> None:
    pass


def class_scores(result: dict, index: int) -> np.ndarray:
    """[h, w] float32 scores of class ``index`` where it is among the pixel's top k, 0 elsewhere, from the model's
    ``"sem_seg_topk_labels"`` / ``"sem_seg_topk_scores"`` [k, h, w]."""
    labels = as_array(result["sem_seg_topk_labels"])
    scores = as_array(result["sem_seg_topk_scores"]).astype(np.float32)
    return np.where(labels == index, scores, 0).max(axis=0)


def legend_html(labels: np.ndarray, metadata, seconds: float) -> str:
    """The classes present in ``labels`` with their colour and pixel share, most pixels first, as HTML."""
    counts = np.bincount(labels.ravel(), minlength=len(metadata.stuff_classes))
    share = counts / counts.sum()
    rows = []
    for i in np.argsort(-counts, kind="stable"):
        if counts[i] == 0:
            break
        r, g, b = metadata.stuff_colors[i]
        name = html.escape(metadata.stuff_classes[i])
        rows.append(
            f'<tr class="legend-row" data-class="{name}"><td><span style="display:inline-block;width:1.2em;'
            f'height:1.2em;background:rgb({r},{g},{b})"></span></td><td class="legend-name">{name}</td>'
            f'<td class="legend-share">{100 * share[i]:.1f}%</td></tr>'
        )
    present = len(rows)
    return (
        f"<p>{present} of {len(metadata.stuff_classes)} classes present ({seconds:.2f} s)</p>"
        f'<table class="legend"><tr><th></th><th>class</th><th>pixels</th></tr>{"".join(rows)}</table>'
    )


def draw_score_map(image_bgr: np.ndarray, scores: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """One class's scores as a colour map over the image, at the overlay's size, with a colour bar.

    Args:
        image_bgr: [H, W, 3] uint8.
        scores: [H, W] in [0, 1].
        size: (h, w) of the overlay beside which it is shown.

    Returns:
        [h, w + COLOR_BAR_WIDTH, 3] uint8 RGB.
    """
    height, width = size
    # The image's pixels enlarged as the overlay shows them; the scores interpolated between pixels.
    image = cv2.resize(image_bgr, (width, height), interpolation=cv2.INTER_NEAREST)
    scores = cv2.resize(scores.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    blend = cv2.addWeighted(image, 0.35, _score_colors(scores), 0.65, 0)
    return np.concatenate([blend, color_bar(height)], axis=1)[:, :, ::-1]


def _score_colors(scores: np.ndarray) -> np.ndarray:
    """[H, W] scores in [0, 1] -> [H, W, 3] uint8 BGR of the viridis colour map."""
    return cv2.applyColorMap(np.round(np.clip(scores, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)


COLOR_BAR_WIDTH = 56


def color_bar(height: int) -> np.ndarray:
    """The key of the score map: [height, COLOR_BAR_WIDTH, 3] uint8 BGR, white, with the colour map from 1 (top)
    to 0 (bottom) in a strip at its left and the scores 1.0, 0.5 and 0.0 written beside it."""
    bar = np.full((height, COLOR_BAR_WIDTH, 3), 255, np.uint8)
    margin, strip = 8, 14
    span = max(height - 2 * margin, 1)
    levels = 1.0 - np.arange(span) / max(span - 1, 1)  # top to bottom
    bar[margin : margin + span, 4 : 4 + strip] = _score_colors(levels[:, None].repeat(strip, axis=1))
    for value in (1.0, 0.5, 0.0):
        y = margin + round((1.0 - value) * (span - 1))
        cv2.putText(
            bar,
            f"{value:.1f}",
            (4 + strip + 4, min(max(y + 4, 10), height - 2)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.35,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return bar


def build_app(segmenter: Segmenter, examples: Sequence[Tuple[str, str]], default_vocabulary: str, title: str):
    """The page (a ``gradio.Blocks``). Element ids (for tests and styling): image, vocabulary, score-class, segment,
    overlay, legend, score-map."""
    gr = gradio()

    # Gradio hands its progress bar to a handler whose parameter defaults to a gr.Progress.
    def segment(upload, vocabulary_text, score_class, progress=gr.Progress()):
        return segmenter(upload, vocabulary_text, score_class, progress)

    with gr.Blocks(title="ESC-Net", analytics_enabled=False) as app:
        gr.Markdown(f"## ESC-Net open-vocabulary segmentation\n{title}")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="image", sources=["upload"], elem_id="image")
                vocabulary = gr.Textbox(
                    value=default_vocabulary,
                    lines=2,
                    label="vocabulary: classes separated by ';', synonyms by ','",
                    elem_id="vocabulary",
                )
                score_class = gr.Textbox(label="score map of (optional): one class", elem_id="score-class")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
                if examples:
                    gr.Examples(
                        examples=[[path, names] for path, names in examples],
                        inputs=[image, vocabulary],
                        label="examples (each with its benchmark's names; the first names unseen classes)",
                    )
            with gr.Column():
                overlay = gr.Image(label="segmentation", elem_id="overlay", interactive=False, format="png")
                legend = gr.HTML(elem_id="legend")
                score_map = gr.Image(label="score map", elem_id="score-map", interactive=False, format="png")
        button.click(
            segment,
            inputs=[image, vocabulary, score_class],
            outputs=[overlay, legend, score_map],
            api_name="segment",
            preprocess=False,
        )
    return app


def check_port(host: str, port: int) -> None:
    """Raises InputError, naming ``--port`` or ``--host``, when ``host:port`` cannot be listened on."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except OSError as e:
        raise InputError(f"--host {host!r} is not an address this machine can listen on ({e})") from e
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the web server binds
        try:
            probe.bind((host, port))
        except (OSError, OverflowError) as e:  # OverflowError: a port outside 0-65535
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise InputError(
                f"cannot listen on {host}:{port} ({reason}): choose another port with --port (another server, an "
                "earlier demo perhaps, may hold this one)"
            ) from e


def _pytorch_predictor(args: argparse.Namespace):
    """The PyTorch predictor of the page's config (default: the embedded default and the weights the model zoo
    ships) and that config."""
    opts = list(args.opts)
    if args.config_file is None:
        if not os.path.isfile(DEFAULT_CONFIG):
            raise InputError(
                f"the embedded default needs a source checkout ({DEFAULT_CONFIG} not found); give --config-file "
                "and --opts MODEL.WEIGHTS"
            )
        args.config_file = DEFAULT_CONFIG
        if not any(key == "MODEL.WEIGHTS" for key in opts[::2]):
            opts = ["MODEL.WEIGHTS", DEFAULT_WEIGHTS] + opts
    try:
        cfg = setup_cfg(argparse.Namespace(config_file=args.config_file, opts=opts, device=args.device))
        return build_predictor(args, cfg)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(str(e)) from e


def create(args: argparse.Namespace) -> Tuple[Any, dict]:
    """The page for ``args`` (a ``gradio.Blocks``) and the keyword arguments of its ``launch``."""
    gradio()  # before any model work: without gradio, say so at once
    check_port(args.host, args.port)  # and so for a port another server holds
    if args.backend[0] == "onnxruntime":
        predictor, cfg = build_predictor(args)
        title = f"exported `{os.path.basename(os.path.normpath(args.backend[-1]))}` on ONNX Runtime"
    else:
        predictor, cfg = _pytorch_predictor(args)
        # File names only: the page shows no path of the server's.
        title = f"`{os.path.basename(args.config_file)}`, weights `{os.path.basename(cfg.MODEL.WEIGHTS) or 'random'}`"
    default_vocabulary = "; ".join(predictor.vocabulary or [])
    examples = write_examples(private_folder())
    segmenter = Segmenter(predictor, image_limits(args), args.display_side, palette(cfg), vocabulary_limits(args))
    app = build_app(segmenter, examples, default_vocabulary, title)
    app.queue(default_concurrency_limit=args.concurrency, max_size=args.queue_size)
    launch = {
        "server_name": args.host,
        "server_port": args.port,
        "max_file_size": int(args.max_upload_mb * 2**20),  # bytes
        "allowed_paths": [os.path.dirname(examples[0][0])],
        "theme": theme(),
        "show_error": True,
    }
    return app, launch


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> None:
    """The ``esc-net-web-demo`` command: serves the page until interrupted. Exits with ``"<prog>: error: ..."``
    (status 1) when gradio is missing or the config, weights or default checkpoint are unusable."""
    args = parse_args(argv, prog)
    setup_logger(name="esc_net")
    # A service manager, `kill` and a closed terminal stop the server with SIGTERM or SIGHUP, whose default action
    # ends the process at once, without the exit handlers that remove the private folder (and the uploads in it):
    # they stop it as Ctrl-C does instead (Gradio closes the server, then the handlers run).
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)
    try:
        app, launch = create(args)
    except InputError as e:
        raise SystemExit(f"{prog}: error: {e}") from e
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(f"listening on {args.host}: the page is reachable from other machines")
    app.launch(**launch)
