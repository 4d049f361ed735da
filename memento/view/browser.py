"""Headless Chromium for the viewer's tests, benchmark and screenshot: the system's browser (Debian's `chromium`)
driven by Playwright, which is a test dependency, loaded lazily with the fix in the error.

No browser is downloaded (`playwright install` is never needed): `MEMENTO_CHROMIUM` names another binary.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from memento.core.errors import MementoError

# Offline and quiet: without these, Chromium keeps trying the network (updates, sync, QUIC) and floods the log.
ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def executable() -> Path:
    return Path(os.environ.get("MEMENTO_CHROMIUM", "/usr/bin/chromium"))


@contextmanager
def chromium() -> Iterator:
    """A Playwright `Browser` on the system Chromium, closed on exit."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise MementoError("playwright is not installed: .venv/bin/pip install playwright (make test does)") from None
    path = executable()
    if not path.exists():
        raise MementoError(f"no Chromium at {path}: apt-get install chromium (as root), or set MEMENTO_CHROMIUM")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(path), args=list(ARGS))
        try:
            yield browser
        finally:
            browser.close()
