"""``newsletter preview``: the email as a subscriber would see it, written, served or pictured."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from html import escape
from pathlib import Path

from newsletter import browser
from newsletter.devtools import DevTools
from newsletter.errors import IssueFileError, NewsletterError
from newsletter.parse import parse_issue
from newsletter.render import RenderedIssue, render_issue, write_preview
from newsletter.settings import Settings

PHONE_WIDTH = 375
DESKTOP_WIDTH = 700


@dataclass(frozen=True)
class Preview:
    rendered: RenderedIssue
    html_path: Path
    text_path: Path


def build_preview(issue_path: Path, settings: Settings) -> Preview:
    """Parse, render and write build/<month>/email.html and email.txt."""
    issue = parse_issue(
        issue_path, settings.taxonomy, welcome=settings.reads_as_welcome(issue_path)
    )
    rendered = render_issue(issue, settings)
    html_path, text_path = write_preview(rendered, settings)
    return Preview(rendered, html_path, text_path)


@dataclass(frozen=True)
class Screenshot:
    path: Path
    width: int
    height: int  # the whole document's height: footer and postal address included
    scheme: str  # "light" or "dark"

    def __str__(self) -> str:
        return f"{self.path} ({self.width}×{self.height} px, {self.scheme})"


def take_screenshots(preview: Preview) -> list[Screenshot]:
    """Full-height PNGs of the preview at phone and desktop widths, light and dark, beside
    email.html: email-375px.png, email-700px.png, email-375px-dark.png, email-700px-dark.png."""
    browser.require_chromium()
    folder = preview.html_path.parent
    url = preview.html_path.resolve().as_uri()
    shots: list[Screenshot] = []
    for scheme, suffix in (("light", ""), ("dark", "-dark")):
        for width in (PHONE_WIDTH, DESKTOP_WIDTH):
            # A fresh page per shot: a viewport once stretched to one height would set the next.
            with DevTools(width=width, height=800, timeout=60) as page:
                page.color_scheme(scheme)
                page.open(url)
                path = folder / f"email-{width}px{suffix}.png"
                size = page.full_page_png(path, width)
            shots.append(Screenshot(path, *size, scheme))
    return shots


# --- live preview -------------------------------------------------------------------------

_RELOAD_SCRIPT = """
<script>
(function () {
  var seen = null;
  function poll() {
    fetch("/__version", {cache: "no-store"}).then(function (r) { return r.text(); })
      .then(function (v) { if (seen !== null && v !== seen) { location.reload(); } seen = v; })
      .catch(function () {}).finally(function () { setTimeout(poll, 700); });
  }
  poll();
})();
</script>
"""


def watched_files(issue_path: Path, settings: Settings) -> Iterator[Path]:
    yield issue_path
    if settings.source is not None:
        yield settings.source
    if settings.paths.templates.is_dir():
        yield from (p for p in settings.paths.templates.rglob("*") if p.is_file())


def _fingerprint(paths: Iterator[Path]) -> tuple[tuple[str, float, int], ...]:
    out = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        out.append((str(path), stat.st_mtime, stat.st_size))
    return tuple(sorted(out))


class LivePreview:
    """Serves the preview on localhost and rebuilds it when the issue or a template changes.

    The page polls ``/__version``; a rebuild bumps it and the page reloads itself. A file
    with errors shows them in the page instead of stopping the server.
    """

    def __init__(
        self, issue_path: Path, settings: Settings, host: str = "127.0.0.1", port: int = 8000
    ):
        self.issue_path = issue_path
        self.settings = settings
        self.version = 0
        self.page = ""
        self.text = ""
        self.last_error: str | None = None
        self._fingerprint: tuple[tuple[str, float, int], ...] = ()
        self._stop = threading.Event()
        self.rebuild()
        self.server = http.server.ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def rebuild(self) -> None:
        self._fingerprint = _fingerprint(watched_files(self.issue_path, self.settings))
        try:
            preview = build_preview(self.issue_path, self.settings)
        except IssueFileError as exc:
            self.last_error = str(exc)
        except NewsletterError as exc:
            self.last_error = str(exc)
        else:
            self.last_error = None
            self.page = preview.html_path.read_text("utf-8")
            self.text = preview.text_path.read_text("utf-8")
        self.version += 1

    def poll_changes(self) -> bool:
        """Rebuild when a watched file changed; True when it did."""
        if _fingerprint(watched_files(self.issue_path, self.settings)) != self._fingerprint:
            self.rebuild()
            return True
        return False

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.poll_changes()

    def serve_forever(self, interval: float = 0.5) -> None:
        watcher = threading.Thread(target=self._watch, args=(interval,), daemon=True)
        watcher.start()
        try:
            self.server.serve_forever(poll_interval=0.2)
        finally:
            self._stop.set()
            self.server.server_close()

    def start_in_background(self, interval: float = 0.2) -> threading.Thread:
        threading.Thread(target=self._watch, args=(interval,), daemon=True).start()
        thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        thread.start()
        return thread

    def shutdown(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def _document(self) -> str:
        if self.last_error is not None:
            body = (
                '<!doctype html><html><head><meta charset="utf-8"><title>Preview: errors</title>'
                '<meta name="viewport" content="width=device-width, initial-scale=1"></head>'
                '<body style="font-family: sans-serif; padding: 16px;"><h1>The issue has errors</h1>'
                f"<pre style='white-space: pre-wrap;'>{escape(self.last_error)}</pre></body></html>"
            )
        else:
            body = self.page
        # The reload script is added to what is served only, never to the written preview.
        index = body.lower().rfind("</body>")
        return body[:index] + _RELOAD_SCRIPT + body[index:] if index >= 0 else body + _RELOAD_SCRIPT

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        live = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/__version":
                    self._send(str(live.version), "text/plain")
                elif self.path in ("/", "/email.html"):
                    self._send(live._document(), "text/html")
                elif self.path == "/email.txt":
                    self._send(live.text, "text/plain")
                else:
                    self.send_error(404)

            def _send(self, text: str, kind: str) -> None:
                data = text.encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", f"{kind}; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # the console belongs to the author's messages

        return Handler
