"""The sending guarantees under crashes and faults, checked against the receiving server's record.

- A real send to a real SMTP server, in a subprocess, killed with SIGKILL at 20+ seeded random
  points and resumed each time: every active subscriber gets exactly one copy, except those
  reported uncertain (never more than one copy, and never more than one connection's worth
  per kill).
- A real send to a loopback HTTP service that answers 500, 429 with Retry-After, resets
  connections and times out at random: everyone is delivered once, permanent failures are
  recorded and never retried.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import parseaddr
from pathlib import Path

import pytest

from newsletter.errors import SendError
from newsletter.journal import JournalState
from newsletter.send import SendOptions
from newsletter.status import issue_status
from newsletter.store import open_store

from .loopback import running
from .sending_helpers import make_folder, plain_smtp, run_send
from .smtp_servers import SinkHandler, smtp_server

CONNECTIONS = 4
SUBSCRIBERS = 500
KILLS = 22


def _uncertain_ids(database: Path) -> set[int]:
    conn = open_store(database)
    try:
        return {
            int(r[0])
            for r in conn.execute("SELECT subscriber_id FROM journal WHERE state = 'sending'")
        }
    finally:
        conn.close()


def _wait_for(condition: object, process: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    """True when ``condition()`` holds, False when the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.002)
    raise AssertionError("the send made no progress")


def test_sigkill_at_random_points_never_duplicates_and_never_skips(tmp_path: Path) -> None:
    rng = random.Random(20261122)
    handler = SinkHandler(delay=0.004, keep_content=False)
    with smtp_server(handler) as port:
        provider = plain_smtp(port, CONNECTIONS)
        settings, issue = make_folder(tmp_path, provider, SUBSCRIBERS)
        command = [
            sys.executable,
            "-m",
            "newsletter",
            "--config",
            str(tmp_path / "newsletter.toml"),
            "send",
            "--yes",
            str(issue),
        ]
        env = {k: v for k, v in os.environ.items() if k != "NEWSLETTER_SECRET"}
        kills = 0
        uncertain: set[int] = set()
        while kills < KILLS:
            target = handler.count + rng.randint(2, 9)
            process = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if not _wait_for(lambda target=target: handler.count >= target, process):
                break  # it finished before reaching the kill point
            # A little further on, at a random instant between two replies.
            time.sleep(rng.uniform(0, 0.01))
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
            now = _uncertain_ids(settings.paths.database)
            # Each kill leaves at most one message per connection in flight.
            assert len(now - uncertain) <= CONNECTIONS
            uncertain = now
        assert kills >= 20, f"only {kills} kills landed; the send finished too early"

        final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stderr
        for subscriber_id in uncertain:
            assert f"(subscriber {subscriber_id})" in final.stdout  # reported by name

    received = Counter(r.rcpt_tos[0] for r in handler.received)
    conn = open_store(settings.paths.database)
    emails = dict(conn.execute("SELECT id, email FROM subscribers").fetchall())
    conn.close()
    for subscriber_id, address in emails.items():
        if subscriber_id in uncertain:
            assert received[address] <= 1, address
        else:
            assert received[address] == 1, (address, received[address])
    assert set(received) <= set(emails.values())
    counts = issue_status(settings, "2026-10").counts
    assert counts[JournalState.SENT] == SUBSCRIBERS - len(uncertain)
    assert counts[JournalState.SENDING] == len(uncertain)
    assert len(uncertain) <= kills * CONNECTIONS


# --- faults on an HTTP provider ---------------------------------------------------------------


class FaultyResend:
    """A loopback stand-in for Resend's batch endpoint that fails at random, as networks do.

    Like the real service it remembers each Idempotency-Key and answers a repeated one with
    the first answer, without delivering again.
    """

    def __init__(self, seed: int, bounce: str = "bounce"):
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.delivered: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.replies: dict[str, bytes] = {}
        self.faults: Counter[str] = Counter()
        self.bounce = bounce

    def process(self, key: str, batch: list[dict[str, object]]) -> bytes:
        with self.lock:
            if key in self.replies:
                self.faults["replayed"] += 1
                return self.replies[key]
            data, errors = [], []
            for index, item in enumerate(batch):
                address = parseaddr(str(item["to"][0]))[1]  # type: ignore[index]
                if self.bounce in address:
                    errors.append(
                        {"index": index, "message": "The recipient's address is suppressed"}
                    )
                    self.refused[address] += 1
                else:
                    data.append({"id": f"re_{len(self.delivered)}"})
                    self.delivered[address] += 1
            reply = json.dumps({"data": data, "errors": errors}).encode()
            self.replies[key] = reply
            return reply

    def fault(self) -> str:
        with self.lock:
            roll = self.rng.random()
        for name, threshold in (
            ("500", 0.12),
            ("429", 0.22),
            ("reset-before", 0.28),
            ("reset-after", 0.34),
            ("timeout", 0.40),
        ):
            if roll < threshold:
                self.faults[name] += 1
                return name
        return "ok"


@contextmanager
def faulty_server(service: FaultyResend) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            fault = service.fault()
            if fault == "500":
                return self._reply(500, b'{"name":"internal_server_error"}')
            if fault == "429":
                return self._reply(429, b'{"name":"rate_limit_exceeded"}', {"Retry-After": "1"})
            if fault == "reset-before":
                return self._reset()
            reply = service.process(self.headers["Idempotency-Key"], json.loads(body))
            if fault == "reset-after":
                return self._reset()  # processed, but the answer is lost
            if fault == "timeout":
                time.sleep(0.8)  # the client gave up at 0.3 s
            self._reply(200, reply)

        def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            try:
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client timed out and left: as on the internet

        def _reset(self) -> None:
            # SO_LINGER 0: close with a TCP reset, not a polite FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with running(server) as url:
        yield url


def test_http_faults_deliver_everyone_once_and_never_retry_permanent_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESEND_API_KEY", "re_loopback_key")
    service = FaultyResend(seed=7)
    with faulty_server(service) as url:
        provider = (
            f'[provider]\nname = "resend"\nbase_url = "{url}"\ntimeout = 0.3\nbatch_size = 10\n'
        )
        settings, issue = make_folder(tmp_path, provider, 200)
        conn = open_store(settings.paths.database)
        bounced = [f"bounce{n}@example.net" for n in range(7)]
        for address in bounced:
            conn.execute(
                "INSERT INTO subscribers (email, email_key, name, status, source, created_at, status_changed_at, status_source) "
                "VALUES (?, ?, '', 'active', 'test', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', 'test')",
                (address, address),
            )
        conn.close()
        runs = 0
        while True:
            runs += 1
            # A streak of failures stops a run; the next run resumes.
            with contextlib.suppress(SendError):
                run_send(settings, issue, SendOptions(sleep=lambda seconds: None))
            counts = issue_status(settings, "2026-10").counts
            if counts[JournalState.QUEUED] + counts[JournalState.DEFERRED] == 0:
                break
            assert runs < 10, counts
    assert all(
        service.faults[name] > 0
        for name in ("500", "429", "reset-before", "reset-after", "timeout", "replayed")
    ), service.faults
    expected = {f"reader{n}@example.net" for n in range(1, 201)}
    assert set(service.delivered) == expected
    assert set(service.delivered.values()) == {1}  # once each, despite the replays
    assert service.refused == Counter(dict.fromkeys(bounced, 1))  # never retried
    final = issue_status(settings, "2026-10")
    assert final.counts[JournalState.SENT] == 200
    assert sorted(e.email for e in final.failed) == sorted(bounced)
    assert all("suppressed" in e.reason for e in final.failed)
    assert final.counts[JournalState.SENDING] == 0
