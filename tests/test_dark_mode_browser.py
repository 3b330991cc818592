"""Contrast of every text element of the email, light and dark, in real headless Chromium.

Mail clients that honour ``prefers-color-scheme: dark`` apply the template's dark-mode rules;
the page is rendered with that preference emulated and every element that shows text is
measured against WCAG 2.1 AA: a contrast ratio of at least 4.5:1 with what lies behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from newsletter.preview import build_preview
from newsletter.settings import Settings

from .cdp import Browser
from .conftest import SAMPLE_ISSUES, VALID_ISSUE
from .regenerate_goldens import CASES

AA_TEXT = 4.5

# For each element with its own visible text: its text colour and the colour behind it (the
# nearest ancestor background, blended through translucent ones onto white), and the ratio.
_CONTRASTS = r"""
(function () {
  function parse(c) {
    var m = c.match(/rgba?\(([^)]+)\)/);
    if (!m) return [0, 0, 0, 0];
    var p = m[1].split(/[ ,\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  }
  function over(top, bottom) {
    var a = top[3];
    return [0, 1, 2].map(function (i) { return top[i] * a + bottom[i] * (1 - a); }).concat([1]);
  }
  function behind(e) {
    var layers = [];
    for (var n = e; n && n.nodeType === 1; n = n.parentElement) {
      var bg = parse(getComputedStyle(n).backgroundColor);
      if (bg[3] > 0) { layers.push(bg); if (bg[3] >= 1) break; }
    }
    var colour = [255, 255, 255, 1];
    for (var i = layers.length - 1; i >= 0; i--) colour = over(layers[i], colour);
    return colour;
  }
  function luminance(c) {
    var v = c.slice(0, 3).map(function (x) {
      x = x / 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2];
  }
  var out = [];
  document.body.querySelectorAll("*").forEach(function (e) {
    var own = [].some.call(e.childNodes, function (n) {
      return n.nodeType === 3 && n.textContent.trim();
    });
    var style = getComputedStyle(e);
    if (!own || style.display === "none" || style.visibility === "hidden") return;
    if (!e.getClientRects().length || e.closest("[style*='display:none'],[style*='display: none']")) return;
    var bg = behind(e), fg = over(parse(style.color), bg);
    var l1 = luminance(fg), l2 = luminance(bg);
    var ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    out.push({tag: e.tagName.toLowerCase(), cls: e.className || "",
              text: e.textContent.trim().slice(0, 40), color: style.color,
              background: "rgb(" + bg.slice(0, 3).map(Math.round).join(", ") + ")",
              ratio: Math.round(ratio * 100) / 100});
  });
  return out;
})()
"""

ELEMENTS_ISSUE = VALID_ISSUE.replace(
    "Notice ruptures and *talk* about them.",
    "Notice ruptures and *talk* about them, as [the manual](https://example.org/m) says.\n\n"
    "> A quoted passage from the article.\n\n"
    "1. First step, with `code`.\n2. Second step.\n\n### A smaller heading\n\nMore text.",
).replace(
    "Repair was associated with outcome",
    "## Method\n\nA heading inside the summary.\n\nRepair was associated with outcome",
)


def contrasts(html: Path, scheme: str) -> list[dict[str, Any]]:
    with Browser(width=700, height=900) as chromium:
        chromium.call(
            "Emulation.setEmulatedMedia",
            features=[{"name": "prefers-color-scheme", "value": scheme}],
        )
        chromium.open(html.resolve().as_uri())
        assert chromium.evaluate("matchMedia('(prefers-color-scheme: dark)').matches") is (
            scheme == "dark"
        )
        found: list[dict[str, Any]] = chromium.evaluate(_CONTRASTS)
    return found


ISSUES = [*SAMPLE_ISSUES, *sorted(CASES.glob("*.md"))]


@pytest.mark.parametrize("scheme", ["dark", "light"])
@pytest.mark.parametrize("path", ISSUES, ids=[p.name for p in ISSUES])
def test_every_text_element_meets_wcag_aa_contrast(
    path: Path, scheme: str, settings: Settings
) -> None:
    measured = contrasts(build_preview(path, settings).html_path, scheme)
    assert len(measured) > 12  # the whole email was measured, not an empty page
    low = [m for m in measured if m["ratio"] < AA_TEXT]
    assert low == [], f"{scheme} mode: text below {AA_TEXT}:1: {low}"


@pytest.mark.parametrize("scheme", ["dark", "light"])
def test_every_markdown_element_meets_wcag_aa_contrast(
    scheme: str, settings: Settings, write_issue: Callable[..., Path]
) -> None:
    measured = contrasts(build_preview(write_issue(ELEMENTS_ISSUE), settings).html_path, scheme)
    tags = {m["tag"] for m in measured}
    assert {"p", "li", "code", "h2", "h3", "a", "em"} <= tags, tags
    low = [m for m in measured if m["ratio"] < AA_TEXT]
    assert low == [], f"{scheme} mode: text below {AA_TEXT}:1: {low}"


def test_the_practice_implications_heading_is_readable_in_dark_mode(settings: Settings) -> None:
    measured = contrasts(build_preview(SAMPLE_ISSUES[0], settings).html_path, "dark")
    headings = [m for m in measured if m["text"].casefold() == "practice implications"]
    assert headings and all(m["ratio"] >= AA_TEXT for m in headings), headings
