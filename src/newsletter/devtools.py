"""A small Chrome DevTools Protocol client over ``--remote-debugging-pipe``.

Preview screenshots need what Chromium's command-line flags cannot give: the page's full
height, and dark mode emulated. This drives headless Chromium with nothing but the standard
library: commands go to the browser on file descriptor 3 and answers come back on 4, as
NUL-terminated JSON. The page tests extend it (tests/cdp.py) to click and read pages.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from newsletter.browser import HEADLESS_FLAGS, require_chromium
from newsletter.errors import NewsletterError


class BrowserError(NewsletterError, AssertionError):
    """Chromium refused a command, closed the pipe or did not answer in time."""


class DevTools:
    """One headless Chromium with one page, emulating a screen ``width`` CSS px wide."""

    def __init__(self, width: int = 375, height: int = 800, timeout: float = 20):
        chromium = require_chromium()
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="newsletter-cdp-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def map_pipes() -> None:  # runs in the child, before exec
            # Copies first: in a fresh process the pipe may already be fd 3 or 4, and
            # dup2 onto itself would leave it close-on-exec.
            reader, writer = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(reader, 3)
            os.dup2(writer, 4)

        flags = [f for f in HEADLESS_FLAGS if f != "--hide-scrollbars"]
        self.process = subprocess.Popen(
            [
                chromium,
                *flags,
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile.name}",
                "about:blank",
            ],
            preexec_fn=map_pipes,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        try:
            targets = self._call("Target.getTargets")["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            attached = self._call("Target.attachToTarget", targetId=page["targetId"], flatten=True)
            self.session: str = attached["sessionId"]
            self.call("Page.enable")
            self.call("Runtime.enable")
            self.resize(width, height)
        except BaseException:
            self.close()
            raise

    # --- protocol -------------------------------------------------------------------------
    def _send(self, message: dict[str, Any]) -> None:
        try:
            os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        except OSError as exc:
            raise BrowserError(
                f"Chromium exited before it answered ({exc.strerror}); "
                "run `chromium --headless --dump-dom about:blank` to see why"
            ) from None

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise BrowserError(f"Chromium did not answer within {self.timeout:g} s")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise BrowserError("Chromium closed the connection")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def _call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._send(message)
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result
            self.events.append(answer)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self._call(method, self.session, **params)

    def wait_for_event(self, method: str, since: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        index = since
        while True:
            while index < len(self.events):
                if self.events[index].get("method") == method:
                    return self.events.pop(index)
                index += 1
            self.events.append(self._read(deadline))

    # --- the page ---------------------------------------------------------------------------
    def resize(self, width: int, height: int) -> None:
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=width < 600,
        )

    def color_scheme(self, scheme: str) -> None:
        """Emulate ``prefers-color-scheme``: "dark" or "light"."""
        self.call(
            "Emulation.setEmulatedMedia",
            features=[{"name": "prefers-color-scheme", "value": scheme}],
        )

    def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self.events.clear()
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        self.wait_for_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def full_page_png(self, out: Path, width: int) -> tuple[int, int]:
        """Save the whole page, top to bottom, as a PNG ``width`` px wide; return its size."""
        height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
        # The viewport takes the document's height, so nothing is cut and no scroll remains.
        self.resize(width, height)
        height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
        self.resize(width, height)
        shot = self.call(
            "Page.captureScreenshot",
            format="png",
            clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            captureBeyondViewport=True,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(shot["data"]))
        return width, height

    def close(self) -> None:
        with contextlib.suppress(BrowserError, OSError):
            self._call("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._profile.cleanup()

    def __enter__(self) -> DevTools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
