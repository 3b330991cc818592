"""Helpers for the web endpoint tests: settings with a secret, and the app on a loopback port."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from newsletter import store, subscribe_requests
from newsletter.settings import Settings
from newsletter.store import Status, Subscriber
from newsletter.tokens import Signer
from newsletter.web import WebApp, make_server

from .conftest import write_settings
from .loopback import running

SECRET = "a-test-secret-of-enough-length-0123456789"
PUBLIC_URL = "https://news.example.org"


def web_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str = "") -> Settings:
    monkeypatch.setenv("NEWSLETTER_SECRET", SECRET)
    settings = write_settings(tmp_path, f'[web]\nurl = "{PUBLIC_URL}"\n' + extra)
    store.open_store(settings.paths.database).close()  # the app refuses to start without one
    return settings


def signer_for(settings: Settings) -> Signer:
    return Signer.for_settings(settings)


def add(
    settings: Settings, email: str, status: Status = Status.ACTIVE, **kwargs: object
) -> Subscriber:
    with closing(store.open_store(settings.paths.database)) as conn:
        return store.add_subscriber(conn, email, status=status, **kwargs)  # type: ignore[arg-type]


def current(settings: Settings, email_or_id: str | int) -> Subscriber:
    with closing(store.open_store(settings.paths.database)) as conn:
        return store.require_subscriber(conn, email_or_id)


@contextmanager
def serving(app: WebApp) -> Iterator[str]:
    """Run ``app`` on a free loopback port in a thread; yields its base URL (no trailing /)."""
    try:
        with running(make_server(app, "127.0.0.1", 0, log=False)) as url:
            yield url
    finally:
        app.close()


def settled(settings: Settings, timeout: float = 10.0) -> None:
    """Wait until the app's background thread has sent every queued confirmation."""
    deadline = time.monotonic() + timeout
    while True:
        with closing(store.open_store(settings.paths.database)) as conn:
            if subscribe_requests.queued_count(conn) == 0:
                return
        if time.monotonic() > deadline:
            raise AssertionError("queued confirmation emails were not sent in time")
        time.sleep(0.02)


def local(url: str, base: str) -> str:
    """A public link from an email, pointed at the app on loopback instead."""
    assert url.startswith(PUBLIC_URL + "/"), url
    return base + url[len(PUBLIC_URL) :]


def post_cut_short(base: str, path: str, headers: dict[str, str], body: bytes, sent: int) -> int:
    """POST ``body``'s length but only its first ``sent`` bytes, as a client whose connection
    ends part-way; the status the server answers."""
    host, port = base.removeprefix("http://").split(":")
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head.encode() + body[:sent])
        connection.shutdown(socket.SHUT_WR)  # the end of what this client sends
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])
