"""The web page's request handler (``Segmenter``) and its private folder, without a server: what is refused before
the model lock, what the page's messages show of the user's text, and the folders that killed pages left behind.
(The page over HTTP and in a browser: tests/test_web_demo.py.)"""

import fcntl
import os
import threading
import time

import cv2
import numpy as np
import pytest

from conftest import tiny_cfg
from esc_net.predictor import ESCNetPredictor

pytest.importorskip("gradio", reason="the web demo needs gradio (pip install -e .[web])")
from esc_net.demo import web  # noqa: E402


@pytest.fixture(scope="module")
def predictor():
    return ESCNetPredictor(tiny_cfg())


@pytest.fixture(scope="module")
def upload(tmp_path_factory):
    path = tmp_path_factory.mktemp("upload") / "square.png"
    assert cv2.imwrite(str(path), np.zeros((40, 50, 3), np.uint8))
    return {"path": str(path), "orig_name": "square.png"}


class RecordingLock:
    """The model lock, counting the requests that took it; a request that would wait for it fails instead."""

    def __init__(self):
        self.lock, self.taken = threading.Lock(), 0

    def __enter__(self):
        if not self.lock.acquire(blocking=False):
            raise AssertionError("the model lock is held by another request: this one would wait for it")
        self.taken += 1

    def __exit__(self, *exc):
        self.lock.release()


def test_a_long_name_is_refused_before_the_model_lock(predictor, upload):
    """A 100,000-character name (whose tokenisation took minutes inside the lock) is refused without taking it,
    while another request holds it; a request within the limits then takes it."""
    segmenter = web.Segmenter(predictor)
    segmenter._model_lock = RecordingLock()
    with segmenter._model_lock.lock:  # another user's request is running
        with pytest.raises(web.gradio().Error) as error:
            segmenter(upload, "cat; " + "x" * 100_000, "")
        with pytest.raises(
            web.gradio().Error, match="The vocabulary has 2001 class names; at most 2000 are accepted: shorten it"
        ):
            segmenter(upload, "; ".join(f"c{i}" for i in range(2001)), "")
    assert segmenter._model_lock.taken == 0
    message = error.value.message
    assert "Class name 1 ('xxxx" in message and "has 100000 characters; at most 300 are accepted" in message
    assert "--max-name-chars" in message and len(message) < 300
    segmenter(upload, "cat; dog", "")
    assert segmenter._model_lock.taken == 1


def test_the_page_limits_come_from_its_command_line():
    args = web.parse_args(["--max-name-chars", "50", "--max-classes", "7"])
    assert web.vocabulary_limits(args) == web.VocabularyLimits(max_name_chars=50, max_classes=7)
    defaults = web.vocabulary_limits(web.parse_args([]))
    assert defaults == web.VocabularyLimits() and defaults.max_classes >= 847


@pytest.mark.parametrize(
    "file_name, vocabulary, score_class, shown",
    [
        ("square.png", "<b>cat</b>; <B>CAT</B>", "", "&lt;B&gt;CAT&lt;/B&gt;"),
        ("square.png", "cat; dog", '<img src="x">', '&lt;img src="x"&gt;'),
        ("<a href='x'>me</a>.png", "cat", "", "&lt;a href='x'&gt;me&lt;/a&gt;.png"),
    ],
)
def test_user_text_in_a_message_is_shown_as_text(predictor, tmp_path, file_name, vocabulary, score_class, shown):
    """Gradio renders an error's message as HTML: what the user typed or named is escaped, so that it shows as
    typed and no tag of it renders (the log keeps the plain text)."""
    path = tmp_path / "upload.png"
    if file_name == "square.png":
        assert cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    else:
        path.write_text("not an image")
    with pytest.raises(web.gradio().Error) as error:
        web.Segmenter(predictor)({"path": str(path), "orig_name": file_name}, vocabulary, score_class)
    message = error.value.message
    assert shown in message and not any(tag in message.lower() for tag in ("<b>", "<img", "<a "))


def _folder(parent, name, files=("upload.png",), age_s=0):
    path = parent / name
    path.mkdir()
    for file in files:
        (path / file).write_bytes(b"a user's upload")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_folders_of_killed_pages_are_removed_and_no_other(tmp_path, monkeypatch):
    killed = _folder(tmp_path, web.FOLDER_PREFIX + "killed")  # killed a moment ago, restarted at once
    killed_starting = _folder(tmp_path, web.FOLDER_PREFIX + "killed_starting", files=(), age_s=3600)
    running = _folder(tmp_path, web.FOLDER_PREFIX + "running")
    starting = _folder(tmp_path, web.FOLDER_PREFIX + "starting", files=())  # just created, not locked yet
    other = _folder(tmp_path, "gradio")
    target = _folder(tmp_path, "elsewhere")
    (tmp_path / (web.FOLDER_PREFIX + "link")).symlink_to(target)
    held = os.open(running, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a page that runs holds its folder
        monkeypatch.setattr(web.os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)  # another user's folders
        assert web.remove_stale_folders(str(tmp_path)) == []
        monkeypatch.undo()
        assert web.remove_stale_folders(str(tmp_path)) == [str(killed), str(killed_starting)]
        # the page that is starting can lock its folder: the clean-up did not hold it
        fd = os.open(starting, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    finally:
        os.close(held)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [running.name, starting.name, other.name, target.name, web.FOLDER_PREFIX + "link"]
    )
    assert (target / "upload.png").is_file() and (running / "upload.png").is_file()
