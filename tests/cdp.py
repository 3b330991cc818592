"""The page tests' browser: the library's DevTools client, plus clicking and reading like a person.

It drives Debian's headless Chromium over ``--remote-debugging-pipe`` (newsletter.devtools):
enough to open pages at a phone's width, click like a person, and read what the page shows.
"""

from __future__ import annotations

import json

from newsletter.devtools import BrowserError, DevTools

from .pages import require_chromium

__all__ = ["Browser", "BrowserError"]


class Browser(DevTools):
    def __init__(self, width: int = 375, height: int = 800, timeout: float = 20):
        require_chromium()
        super().__init__(width, height, timeout)

    def click(self, selector: str) -> None:
        """Click the element with the mouse, as a person would, and wait for the next page.

        It aims at the middle of the element's first line box: a link wrapped over two lines
        has a bounding box whose centre may fall between its words.
        """
        box = self.evaluate(
            f"(function () {{ var e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " var r = e.getClientRects()[0]; return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        if box is None:
            raise BrowserError(f"nothing on the page matches {selector!r}")
        self.events.clear()
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
        self.wait_for_event("Page.loadEventFired")

    def allow_downloads(self, folder: str) -> None:
        """Save what the pages download into ``folder`` (a browser-wide setting)."""
        self._call("Browser.setDownloadBehavior", None, behavior="allow", downloadPath=folder)

    def press(self, selector: str) -> None:
        """Press a button without waiting for a page: for a form whose answer is a download."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    @property
    def url(self) -> str:
        return str(self.evaluate("location.href"))

    def text(self, selector: str = "body") -> str:
        return str(self.evaluate(f"document.querySelector({json.dumps(selector)}).innerText"))

    def __enter__(self) -> Browser:
        return self
