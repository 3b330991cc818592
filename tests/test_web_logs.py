"""Access logs never hold a token: `newsletter serve`'s own log, and a WSGI server's log in the
format docs/web.md gives for gunicorn."""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from newsletter.settings import Settings
from newsletter.web import WebApp, make_server

from .web_server import add, signer_for, web_settings

DOCS = Path(__file__).parent.parent / "docs" / "web.md"
WsgiApp = Callable[[dict[str, Any], Any], Iterable[bytes]]


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return web_settings(tmp_path, monkeypatch)


@contextmanager
def served(app: WsgiApp, *, log: bool) -> Iterator[str]:
    server = make_server(app, "127.0.0.1", 0, log=log)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def gunicorn_format() -> str:
    found = re.findall(r"^access_log_format = '(.+)'$", DOCS.read_text("utf-8"), re.M)
    assert len(found) == 1, "docs/web.md gives one gunicorn access_log_format"
    return found[0]


class AccessLogged:
    """Wraps the app as gunicorn does: after the response, one line in ``access_log_format``
    from atoms built the way gunicorn builds them (request line, then ``{key}e`` per environ key)."""

    def __init__(self, app: WsgiApp, log_format: str):
        self.app, self.log_format, self.lines = app, log_format, list[str]()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = list(self.app(environ, start_response))
        path = environ["PATH_INFO"] + (
            f"?{environ['QUERY_STRING']}" if environ.get("QUERY_STRING") else ""
        )
        atoms: dict[str, object] = {
            "h": environ.get("REMOTE_ADDR", "-"),
            "t": "[23/Nov/2026:12:00:00 +0000]",
            "r": f"{environ['REQUEST_METHOD']} {path} {environ['SERVER_PROTOCOL']}",
            "m": environ["REQUEST_METHOD"],
            "U": environ["PATH_INFO"],
            "s": 200,
            "b": str(sum(len(chunk) for chunk in body)),
            "L": "0.001",
        }
        atoms.update({"{" + key.lower() + "}e": value for key, value in environ.items()})
        self.lines.append(self.log_format % defaultdict(lambda: "-", atoms))
        return body


def test_serve_leaves_tokens_out_of_its_access_log(
    settings: Settings, capfd: pytest.CaptureFixture[str]
) -> None:
    reader = add(settings, "reader@example.net")
    token = signer_for(settings).unsubscribe_token(reader.id)
    with served(WebApp(settings), log=True) as base:
        assert requests.get(f"{base}/unsubscribe/{token}", timeout=5).status_code == 200
    log = capfd.readouterr().err
    assert "GET /unsubscribe/… HTTP/1.1" in log
    assert token not in log


def test_the_documented_gunicorn_format_leaves_tokens_out(settings: Settings) -> None:
    reader = add(settings, "reader@example.net")
    signer = signer_for(settings)
    tokens = [signer.unsubscribe_token(reader.id), signer.confirm_token(reader.id)]
    app = AccessLogged(WebApp(settings), gunicorn_format())
    with served(app, log=False) as base:
        requests.get(f"{base}/unsubscribe/{tokens[0]}", timeout=5)
        requests.post(f"{base}/unsubscribe/{tokens[0]}", data={}, timeout=5)
        requests.get(f"{base}/confirm/{tokens[1]}", timeout=5)
    assert [line.split('"')[1] for line in app.lines] == [
        "GET /unsubscribe/…",
        "POST /unsubscribe/…",
        "GET /confirm/…",
    ]
    assert not [line for line in app.lines if any(token in line for token in tokens)]


def test_gunicorns_default_format_would_log_the_token(settings: Settings) -> None:
    """Why the format above is needed: %(r)s, in gunicorn's default, is the request line."""
    reader = add(settings, "reader@example.net")
    token = signer_for(settings).unsubscribe_token(reader.id)
    app = AccessLogged(WebApp(settings), '%(h)s %(t)s "%(r)s" %(s)s %(b)s')
    with served(app, log=False) as base:
        requests.get(f"{base}/unsubscribe/{token}", timeout=5)
    assert token in app.lines[0]
