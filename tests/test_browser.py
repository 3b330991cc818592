"""Real-browser tests of the preview: headless Chromium, installed by scripts/install-browser."""

from __future__ import annotations

import struct
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from newsletter import browser
from newsletter.preview import LivePreview, build_preview, take_screenshots
from newsletter.settings import Settings, load_settings

from .cdp import Browser
from .conftest import REPO, SAMPLE_ISSUES, VALID_ISSUE, WELCOME_SAMPLE
from .pages import measure, require_chromium
from .regenerate_goldens import CASES

# The samples, and the golden cases (long unbreakable author names among them).
LAYOUT_ISSUES = [*SAMPLE_ISSUES, WELCOME_SAMPLE, *sorted(CASES.glob("*.md"))]


@pytest.mark.parametrize("path", LAYOUT_ISSUES, ids=[p.name for p in LAYOUT_ISSUES])
def test_preview_at_phone_width_is_one_column_without_horizontal_scroll(
    path: Path, tmp_path: Path
) -> None:
    settings = load_settings(REPO / "newsletter.toml")
    settings = _with_build(settings, tmp_path)
    preview = build_preview(path, settings)
    phone = measure(preview.html_path.parent, "email.html", 375)
    assert phone["viewport"] == 375
    assert phone["scrollWidth"] <= 375, phone
    assert phone["overflowing"] == []
    # Every MJML column takes the whole width: one column, nothing side by side.
    assert phone["columns"] and all(width >= 375 - 2 for width in phone["columns"]), phone
    desktop = measure(preview.html_path.parent, "email.html", 700)
    assert desktop["scrollWidth"] <= 700
    assert set(desktop["columns"]) == {640}, desktop  # the email's fixed desktop width


def test_screenshots_show_the_whole_email_light_and_dark(settings: Settings) -> None:
    require_chromium()
    # The longest sample: three articles, far taller than any fixed window.
    preview = build_preview(SAMPLE_ISSUES[0], settings)
    shots = take_screenshots(preview)
    assert [s.path.name for s in shots] == [
        "email-375px.png",
        "email-700px.png",
        "email-375px-dark.png",
        "email-700px-dark.png",
    ]
    with Browser(width=375) as page:
        heights = {}
        for width in (375, 700):
            page.resize(width, 800)
            page.open(preview.html_path.resolve().as_uri())
            heights[width] = page.evaluate("document.documentElement.scrollHeight")
    for shot in shots:
        data = shot.path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        size = struct.unpack(">II", data[16:24])
        # The PNG is as tall as the document: the footer and postal address are in it.
        assert size == (shot.width, shot.height) == (shot.width, heights[shot.width]), shot
        assert shot.height > 2400
    light, dark = _pixel(shots[1].path), _pixel(shots[3].path)
    assert light != dark  # the dark one was rendered with prefers-color-scheme: dark


def _pixel(png: Path) -> bytes:
    """The first pixel of the first row of an 8-bit RGB(A) PNG."""
    import zlib

    data = png.read_bytes()
    chunks, at = b"", 8
    while at < len(data):
        length = struct.unpack(">I", data[at : at + 4])[0]
        kind = data[at + 4 : at + 8]
        if kind == b"IDAT":
            chunks += data[at + 8 : at + 8 + length]
        at += 12 + length
    channels = 4 if data[25] == 6 else 3
    raw = zlib.decompressobj().decompress(chunks, 1 + channels)
    return raw[1 : 1 + channels]


def test_live_preview_serves_the_page_and_rebuilds_on_change(
    settings: Settings, write_issue: Callable[..., Path]
) -> None:
    require_chromium()
    path = write_issue()
    live = LivePreview(path, settings, port=0)
    thread: threading.Thread = live.start_in_background(interval=0.1)
    try:
        page = browser.dump_dom(live.url)
        assert "Repairing ruptures helps" in page
        version = _get(live.url + "__version")

        path.write_text(
            VALID_ISSUE.replace("Repairing ruptures helps", "Ruptures, repaired"), "utf-8"
        )
        _wait(lambda: _get(live.url + "__version") != version)
        assert "Ruptures, repaired" in browser.dump_dom(live.url)

        # A mistake shows the errors in the page, and the server keeps running.
        path.write_text(VALID_ISSUE.replace("month: 2026-10", "month: 2026-1"), "utf-8")
        _wait(lambda: "The issue has errors" in _get(live.url))
        assert ":2: month must be YYYY-MM" in browser.dump_dom(live.url)
    finally:
        live.shutdown()
        thread.join(timeout=5)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode("utf-8"))


def _wait(condition: Callable[[], bool], timeout: float = 10) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("the live preview did not rebuild in time")


def _with_build(settings: Settings, folder: Path) -> Settings:
    from dataclasses import replace

    return replace(settings, paths=replace(settings.paths, build=folder / "build"))


def test_the_served_preview_reloads_itself_in_the_browser_when_the_issue_changes(
    settings: Settings, write_issue: Callable[..., Path]
) -> None:
    path = write_issue()
    live = LivePreview(path, settings, port=0)
    thread = live.start_in_background(interval=0.1)
    try:
        with Browser(width=375) as chromium:
            chromium.open(live.url)
            assert "Repairing ruptures helps" in chromium.text("body")
            chromium.events.clear()
            path.write_text(
                VALID_ISSUE.replace("Repairing ruptures helps", "Ruptures, repaired"), "utf-8"
            )
            # Nobody touches the browser: the page notices the rebuild and reloads itself.
            chromium.wait_for_event("Page.loadEventFired")
            assert "Ruptures, repaired" in chromium.text("body")
    finally:
        live.shutdown()
        thread.join(timeout=5)
