"""Debian's Chromium, headless and driven by Selenium, for what reads the web page as a browser does (the page's
browser test, the README's picture)."""

import shutil
from typing import Optional, Tuple

__all__ = ["headless_chromium", "missing_browser"]


def missing_browser() -> Optional[str]:
    """What is missing to drive Chromium ("selenium", "chromium", "chromium-driver"), or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium (the web extra's test requirements)"
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        return "Debian's 'chromium'"
    if not shutil.which("chromedriver"):
        return "Debian's 'chromium-driver'"
    return None


def headless_chromium(window: Tuple[int, int] = (1280, 900)):
    """A headless Chromium (a Selenium ``WebDriver``) with a ``window`` of (width, height) pixels that reaches no
    host but this machine's loopback, so that a page is seen with nothing but what its server gives.

    Raises:
        RuntimeError: naming what is missing (:func:`missing_browser`).
    """
    missing = missing_browser()
    if missing:
        raise RuntimeError(f"cannot drive a browser: {missing} is not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={window[0]},{window[1]}",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        # every host but this machine's loopback is unreachable: the page must need nothing else
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
