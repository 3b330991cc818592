"""Helpers for the real-browser tests: serve a folder on loopback and measure pages in Chromium."""

from __future__ import annotations

import functools
import http.server
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from html import unescape
from pathlib import Path
from typing import Any

import pytest

from newsletter import browser

from .loopback import running

# Headless Chromium will not make its window narrower than 500 px, so a phone is measured
# through an iframe of the phone's width: media queries inside it see that width.
_HARNESS = """<!doctype html><html><head><meta charset="utf-8"></head>
<body style="margin:0"><iframe id="f" src="{src}" style="border:0;width:{width}px;height:3000px"></iframe>
<script>
document.getElementById("f").addEventListener("load", function () {{
  var doc = this.contentDocument, root = doc.documentElement;
  var columns = [].slice.call(doc.querySelectorAll("[class*=mj-column]")).map(function (e) {{
    return Math.round(e.getBoundingClientRect().width);
  }});
  var wide = [].slice.call(doc.body.querySelectorAll("*")).filter(function (e) {{
    return e.getBoundingClientRect().right > {width} + 1;
  }}).map(function (e) {{ return e.tagName + "." + e.className; }}).slice(0, 5);
  document.body.setAttribute("data-measure", JSON.stringify({{
    viewport: this.contentWindow.innerWidth, scrollWidth: root.scrollWidth,
    columns: columns, overflowing: wide, title: doc.title
  }}));
}});
</script></body></html>"""


def require_chromium() -> str:
    found = browser.find_chromium()
    if found is None:
        pytest.fail(f"the browser tests need Chromium: {browser.INSTALL_HINT}")
    return found


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on a free loopback port; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    with running(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)) as url:
        yield url + "/"


def measure(folder: Path, page: str, width: int) -> dict[str, Any]:
    """Load ``folder/page`` at ``width`` CSS px in Chromium and report its layout."""
    require_chromium()
    harness = folder / f"_measure_{width}.html"
    harness.write_text(_HARNESS.format(src=page, width=width), "utf-8")
    with serve_folder(folder) as base:
        dom = browser.dump_dom(base + harness.name, budget_ms=3000)
    found = re.search(r'data-measure="([^"]*)"', dom)
    assert found, f"the page did not finish loading in Chromium:\n{dom[:2000]}"
    result: dict[str, Any] = json.loads(unescape(found.group(1)))
    return result
