"""The web app under gunicorn (four worker processes) on PostgreSQL, while an issue is sent.

A `newsletter send` to 3,000 subscribers runs in a child process (the smtp provider, to a real
SMTP server, at 200 messages a second), and meanwhile 2,000 one-click unsubscribes (RFC 8058)
for 2,000 distinct subscribers are POSTed to gunicorn from 32 threads. Every request answers
200, all 2,000 are unsubscribed afterwards, the send ends without error, and no one was
claimed for the send after their unsubscribe was committed.

When is "after"? The journal cannot tell: ``sent_at`` is written when the provider has
answered, up to a batch's sending time after the claim that chose the subscriber, and
``status_changed_at`` is stamped before the unsubscribe's transaction waits for the store's
writer lock; both are to the second. So the test watches the claims themselves: a trigger it
adds to its own database records, for every journal row set to ``sending``, when the claiming
statement started (``statement_timestamp()``, which precedes the statement's snapshot). An
unsubscribe is committed before its 200 answer reaches the client, whose clock is the same
machine's. A claim that started after the answer arrived therefore saw the unsubscribe, and
must not have chosen that subscriber.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import requests

from newsletter.store import Status, open_store
from newsletter.tokens import Signer

from .sending_helpers import make_folder
from .smtp_servers import SinkHandler, free_port, smtp_server

SUBSCRIBERS = 3000
UNSUBSCRIBES = 2000
CLIENT_THREADS = 32
WORKERS = 4
SEND_RATE = "200/s"
ISSUE = "2026-10"
PUBLIC_URL = "https://news.example.org"
# The send is well under way before the first POST: some of those leaving have had the issue.
HANDED_OVER_BEFORE_THE_BURST = 300
TIMEOUT = 60.0

# Records when each claim of a journal row started; in a schema of its own, out of the store's.
CLAIM_PROBE = """
CREATE SCHEMA probe;
CREATE TABLE probe.claims (subscriber_id BIGINT NOT NULL, claimed_at TIMESTAMPTZ NOT NULL);
CREATE FUNCTION probe.record_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO probe.claims VALUES (NEW.subscriber_id, statement_timestamp());
    RETURN NEW;
END $$;
CREATE TRIGGER probe_claims AFTER UPDATE OF state ON journal FOR EACH ROW
    WHEN (NEW.state = 'sending' AND OLD.state <> 'sending')
    EXECUTE FUNCTION probe.record_claim();
"""


@dataclass(frozen=True)
class Answer:
    subscriber_id: int
    status: int  # 0: no answer
    answered_at: float  # time.time() when the answer had arrived
    problem: str = ""


def _child_env(config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NEWSLETTER_SECRET"}
    env["NEWSLETTER_CONFIG"] = str(config)  # for gunicorn's create_app()
    # The import path as this test run has it (e.g. PYTHONPATH=src), valid from any folder.
    paths = env.get("PYTHONPATH", "").split(os.pathsep)
    env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in paths if p)
    return env


def _newsletter(config: Path, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "newsletter", "--config", str(config), *arguments]


@contextmanager
def _gunicorn(config: Path, log: Path) -> Iterator[str]:
    """gunicorn with ``WORKERS`` workers serving ``create_app()``; yields its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--workers", str(WORKERS)]
    command += ["--bind", f"127.0.0.1:{port}", "newsletter.web:create_app()"]
    # Not a control socket in the home folder, which another gunicorn may be using.
    command += ["--no-control-socket"]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, env=_child_env(config), stdout=output, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                if requests.get(f"{base}/subscribe", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not start: {log.read_text('utf-8')}")
            time.sleep(0.05)  # waiting for a real process to listen
        yield base
    finally:
        process.terminate()
        process.wait(TIMEOUT)


def _unsubscribe(base: str, signer: Signer, subscriber_id: int) -> Answer:
    """The POST a mail client makes for a List-Unsubscribe-Post header (RFC 8058)."""
    try:
        reply = requests.post(
            f"{base}/unsubscribe/{signer.unsubscribe_token(subscriber_id)}",
            data="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=TIMEOUT,
        )
    except requests.RequestException as exc:
        return Answer(subscriber_id, 0, time.time(), repr(exc))
    return Answer(subscriber_id, reply.status_code, time.time(), reply.text[:300])


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert process.poll() is None, f"the send ended before {what}"
        assert time.monotonic() < deadline, f"the send made no progress towards {what}"
        time.sleep(0.01)  # polling a real process


def test_2000_one_click_unsubscribes_to_gunicorn_during_a_send(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store is named in newsletter.toml here ([paths] database), not by the environment.
    monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)
    monkeypatch.delenv("NEWSLETTER_SECRET", raising=False)
    sink = SinkHandler(keep_content=False)
    with smtp_server(sink) as smtp_port:
        settings, issue = make_folder(
            tmp_path,
            f'[paths]\ndatabase = "{postgres_url}"\n[web]\nurl = "{PUBLIC_URL}"\n'
            f'[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = {smtp_port}\n'
            'security = "none"\nconnections = 4\n',
            SUBSCRIBERS,
        )
        with psycopg.connect(postgres_url, autocommit=True) as probe:
            probe.execute(CLAIM_PROBE)
        with closing(open_store(postgres_url, create=False)) as conn:
            ids = [int(r[0]) for r in conn.execute("SELECT id FROM subscribers ORDER BY id")]
        leaving = random.Random(8058).sample(ids, UNSUBSCRIBES)
        signer = Signer.for_settings(settings)
        config = tmp_path / "newsletter.toml"
        send_log = tmp_path / "send.log"

        with _gunicorn(config, tmp_path / "gunicorn.log") as base:
            with open(send_log, "wb") as output:
                send = subprocess.Popen(
                    _newsletter(config, "send", "--yes", "--rate", SEND_RATE, str(issue)),
                    env=_child_env(config),
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            try:
                _wait_for(
                    lambda: sink.count >= HANDED_OVER_BEFORE_THE_BURST, send, "the first POST"
                )
                with ThreadPoolExecutor(CLIENT_THREADS) as pool:
                    answers = list(pool.map(lambda i: _unsubscribe(base, signer, i), leaving))
                send.wait(TIMEOUT)
            finally:
                if send.poll() is None:
                    send.kill()
                    send.wait()
        gunicorn_log = (tmp_path / "gunicorn.log").read_text("utf-8", "replace")
        report = send_log.read_text("utf-8", "replace")

    failed = [a for a in answers if a.status != 200]
    assert not failed, (len(failed), Counter(a.status for a in failed), failed[:3], gunicorn_log)
    assert "Traceback" not in gunicorn_log, gunicorn_log
    assert send.returncode == 0, report

    with closing(open_store(postgres_url, create=False)) as conn:
        status = dict(conn.execute("SELECT id, status FROM subscribers").fetchall())
        emails = dict(conn.execute("SELECT id, email FROM subscribers").fetchall())
        journal = dict(
            conn.execute(
                "SELECT subscriber_id, state FROM journal WHERE issue = ?", (ISSUE,)
            ).fetchall()
        )
    with psycopg.connect(postgres_url) as probe:
        claims = probe.execute("SELECT subscriber_id, claimed_at FROM probe.claims").fetchall()

    assert {i for i, s in status.items() if s == Status.UNSUBSCRIBED} == set(leaving)
    # No claim chose a subscriber after their unsubscribe was committed (see the docstring).
    answered_at = {a.subscriber_id: a.answered_at for a in answers}
    late = [
        (subscriber_id, claimed_at.timestamp() - answered_at[subscriber_id])
        for subscriber_id, claimed_at in claims
        if subscriber_id in answered_at and claimed_at.timestamp() > answered_at[subscriber_id]
    ]
    assert not late, (len(late), late[:10])

    # Unsubscribed before their turn: their queued row was dropped. After: sent, once.
    got_it = {i for i in leaving if i in journal}
    assert set(journal.values()) == {"sent"}
    assert set(journal) == (set(ids) - set(leaving)) | got_it
    left = len(leaving) - len(got_it)
    assert (
        f"{len(journal):,} sent, 0 failed permanently, 0 uncertain, 0 deferred, "
        f"0 skipped as already sent, {left:,} left the list before their turn"
    ) in report
    received = Counter(r.rcpt_tos[0] for r in sink.received)
    assert set(received.values()) == {1}
    assert set(received) == {emails[i] for i in journal}
    # The burst overlapped the send: some of those leaving had been sent the issue, others
    # were passed over.
    assert got_it and left, (len(got_it), left)
    assert Counter(int(i) for i, _ in claims) == Counter(list(journal))  # each claimed once
