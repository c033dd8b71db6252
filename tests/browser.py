"""Open a report.html in real headless Chromium (Debian's `chromium`) and say what a reader gets."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no Chromium found: install it with `apt-get update && apt-get install chromium` (scripts/setup.sh does this)")


def render(html_file: Path) -> dict:
    """Load the page with every network request recorded; return its text, tables, images and requests."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html_file.resolve().as_uri(), wait_until="load")
            return {
                "title": page.title(),
                "text": page.evaluate("document.body.innerText"),
                "headings": page.evaluate("[...document.querySelectorAll('h2')].map(h => h.innerText)"),
                "tables": page.evaluate("[...document.querySelectorAll('table')].map(t => [...t.rows].map(r => [...r.cells].map(c => c.innerText)))"),
                # An image counts when the browser decoded it: complete and with a width.
                "images": page.evaluate("[...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth}))"),
                "requests": [u for u in requests if u != html_file.resolve().as_uri()],
                "scripts": page.evaluate("document.scripts.length"),
                # Tables whose right edge is past the page's (the default viewport is 1280 px wide).
                "tables_cut": page.evaluate("[...document.querySelectorAll('table')].filter(t => "
                                            "t.getBoundingClientRect().right > document.documentElement.clientWidth + 1).length"),
                "width": page.evaluate("document.documentElement.clientWidth"),
            }
        finally:
            browser.close()
