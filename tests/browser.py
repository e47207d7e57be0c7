"""Headless Chromium for the browser tests: Debian's package, driven through Playwright."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from typing import Any, Iterator

import pytest

CHROMIUM = os.environ.get("CABINET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Chromium must not reach out to the internet (none here): these flags keep it quiet.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium_browser() -> Iterator[Any]:
    """A launched headless Chromium; skips without Playwright, fails (not skips) without Chromium."""
    # Imported here: the modules that use it also hold tests that need no browser.
    playwright_sync = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}; ./scripts/test.sh installs Debian's chromium package")
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()
