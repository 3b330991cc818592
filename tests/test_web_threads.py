"""`newsletter serve`'s server: a thread for each connection, kept for the next one."""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from newsletter.web import make_server

from .loopback import running


def _thread_naming_app(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    name = threading.current_thread().name.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(name)))])
    return [name]


def _get(url: str) -> str:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        connection.close()


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_thread_that_is_done_serves_the_next_connection() -> None:
    server = make_server(_thread_naming_app, "127.0.0.1", 0, log=False)  # type: ignore[arg-type]
    names = []
    with running(server) as url:
        for _ in range(20):
            names.append(_get(url))
            # The client has its answer a moment before the thread is done with the connection.
            _wait_until(lambda: server._idle == 1)  # type: ignore[attr-defined]
    # One after the other, every request finds the thread of the one before waiting for it.
    # (A thread per request would have given 20 names: Python numbers every new thread.)
    assert len(set(names)) == 1


def test_a_silent_connection_holds_up_no_other_and_a_busy_server_starts_threads() -> None:
    server = make_server(_thread_naming_app, "127.0.0.1", 0, log=False)  # type: ignore[arg-type]
    with running(server) as url:
        first = _get(url)
        _wait_until(lambda: server._idle == 1)  # type: ignore[attr-defined]  # its thread waits
        host, port = url.removeprefix("http://").split(":")
        silent = [socket.create_connection((host, int(port))) for _ in range(3)]
        try:
            # The waiting thread took the first silent connection; the others got new threads,
            # and so does this request: none of them waits for a client that says nothing.
            answered = _get(url)
            assert answered != first
        finally:
            for connection in silent:
                connection.close()


def test_threads_end_after_waiting_a_while_for_a_connection() -> None:
    server = make_server(_thread_naming_app, "127.0.0.1", 0, log=False)  # type: ignore[arg-type]
    server.idle_seconds = 0.2  # type: ignore[attr-defined]
    with running(server) as url:
        name = _get(url)
        assert any(t.name == name for t in threading.enumerate())
        _wait_until(lambda: all(t.name != name for t in threading.enumerate()))
        assert _get(url) != name  # served by a new thread


def test_after_a_burst_only_a_few_threads_wait_for_more() -> None:
    server = make_server(_thread_naming_app, "127.0.0.1", 0, log=False)  # type: ignore[arg-type]
    server.max_idle = 2  # type: ignore[attr-defined]
    prefix = server.thread_prefix  # type: ignore[attr-defined]

    def threads() -> int:
        return sum(t.name.startswith(prefix) for t in threading.enumerate())

    with running(server) as url:
        host, port = url.removeprefix("http://").split(":")
        silent = [socket.create_connection((host, int(port))) for _ in range(6)]
        try:
            _wait_until(lambda: threads() == 6)
        finally:
            for connection in silent:
                connection.close()
        _wait_until(lambda: threads() == 2)
        time.sleep(0.2)
        assert threads() == 2 and server._idle == 2  # type: ignore[attr-defined]


def test_closing_the_server_ends_its_waiting_threads() -> None:
    server = make_server(_thread_naming_app, "127.0.0.1", 0, log=False)  # type: ignore[arg-type]
    with running(server) as url:
        name = _get(url)
    _wait_until(lambda: all(t.name != name for t in threading.enumerate()))


def test_a_response_leaves_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[int] = []

    def counting(real: Callable[..., Any]) -> Callable[..., Any]:
        def write(self: socket.socket, data: Any, *args: Any) -> Any:
            if threading.current_thread().name != "MainThread":  # the server's, not the client's
                writes.append(len(data))
            return real(self, data, *args)

        return write

    server = make_server(_thread_naming_app, "127.0.0.1", 0, log=False)  # type: ignore[arg-type]
    with running(server) as url:
        monkeypatch.setattr(socket.socket, "sendall", counting(socket.socket.sendall))
        monkeypatch.setattr(socket.socket, "send", counting(socket.socket.send))
        name = _get(url)
        monkeypatch.undo()
    # Status line, headers and body together (unbuffered, wsgiref sends the status line, the
    # Date and Server headers, the other headers and the body each on their own).
    assert len(writes) == 1 and writes[0] > len(name)


def test_a_request_environ_holds_the_request_not_the_process_environment() -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.update(environ)
        start_response("204 No Content", [])
        return []

    assert "PATH" in os.environ  # in the environment since before wsgiref was imported
    server = make_server(app, "127.0.0.1", 0, log=False)  # type: ignore[arg-type]
    with running(server) as url:
        host, port = url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("GET", "/", headers={"X-Probe": "1"})
        assert connection.getresponse().status == 204
        connection.close()
    # wsgiref copies the whole process environment into each request's (secrets included).
    assert "PATH" not in seen
    assert not {name for name in os.environ if not name.startswith("HTTP_")} & set(seen)
    assert seen["HTTP_X_PROBE"] == "1"
    assert seen["wsgi.multithread"] is True


def _ended_by_the_server(connection: socket.socket) -> bool:
    """Whether the server ends ``connection`` (within its 10 s socket timeout)."""
    try:
        while connection.recv(65536):
            pass
    except ConnectionResetError:
        pass  # ended with bytes it had not read: a reset instead of an orderly close
    except TimeoutError:
        return False
    return True


def test_a_connection_that_does_not_finish_in_time_is_ended() -> None:
    server = make_server(_thread_naming_app, "127.0.0.1", 0, log=False)  # type: ignore[arg-type]
    server.connection_seconds = 0.5  # type: ignore[attr-defined]
    with running(server) as url:
        host, port = url.removeprefix("http://").split(":")
        silent = socket.create_connection((host, int(port)), timeout=10)
        trickling = socket.create_connection((host, int(port)), timeout=10)
        stop = threading.Event()

        def trickle() -> None:  # a request line a byte at a time, never finished
            for byte in b"GET /" + b"a" * 1000:
                if stop.wait(0.05):
                    return
                try:
                    trickling.send(bytes([byte]))
                except OSError:
                    return

        sender = threading.Thread(target=trickle)
        sender.start()
        try:
            assert _ended_by_the_server(silent)
            assert _ended_by_the_server(trickling)
        finally:
            stop.set()
            sender.join()
            silent.close()
            trickling.close()
        _get(url)  # the server goes on serving
        _wait_until(lambda: server._deadlines == {})  # type: ignore[attr-defined]


def test_connections_beyond_the_limit_are_answered_503_at_once() -> None:
    server = make_server(_thread_naming_app, "127.0.0.1", 0, log=False)  # type: ignore[arg-type]
    server.max_connections = 2  # type: ignore[attr-defined]
    with running(server) as url:
        host, port = url.removeprefix("http://").split(":")
        silent = [socket.create_connection((host, int(port))) for _ in range(2)]
        try:
            _wait_until(lambda: len(server._deadlines) == 2)  # type: ignore[attr-defined]
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            connection.request("GET", "/")
            refused = connection.getresponse()
            assert refused.status == 503
            assert refused.getheader("Retry-After") == "5"
            connection.close()
        finally:
            for each in silent:
                each.close()
        _wait_until(lambda: server._deadlines == {})  # type: ignore[attr-defined]
        _get(url)  # served again once they are gone


def test_a_connection_whose_thread_cannot_start_is_not_counted_against_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = make_server(_thread_naming_app, "127.0.0.1", 0, log=False)  # type: ignore[arg-type]
    server.max_connections = 1  # type: ignore[attr-defined]
    server.handle_error = lambda request, address: None  # type: ignore[method-assign]
    real_start = threading.Thread.start

    def no_thread(self: threading.Thread) -> None:
        if self.name.startswith(server.thread_prefix):  # type: ignore[attr-defined]
            raise RuntimeError("can't start new thread")
        real_start(self)

    with running(server) as url:
        monkeypatch.setattr(threading.Thread, "start", no_thread)
        with pytest.raises((http.client.HTTPException, OSError)):
            _get(url)  # closed unanswered
        monkeypatch.undo()
        assert _get(url)  # not refused as one connection too many
