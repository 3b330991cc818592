"""The crash test on PostgreSQL, where several senders share one issue.

Four `newsletter send` processes run the same issue against one PostgreSQL store and one real
SMTP server. Each is SIGKILLed at seeded random points and started again, several rounds, then
all four run to the end. The receiving server's record then shows that everyone got exactly one
copy, except the uncertain (rows a killed sender left in ``sending``), who got at most one and
are each named by `newsletter status`; that nobody was skipped; and that the senders really
handed over messages side by side, not one after the other.

Which process sent what is told by the EHLO name: every run of a sender has its own settings
file with its own ``local_hostname``, which the SMTP server records with each message.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from newsletter.store import open_store

from .sending_helpers import make_folder, plain_smtp
from .smtp_servers import Received, SinkHandler, smtp_server

SENDERS = 4
# Per sender; also its batch size (the smtp provider's default), so a kill leaves at most this
# many rows uncertain.
CONNECTIONS = 2
SUBSCRIBERS = 500
ROUNDS = 4  # of kills: each sender is killed once a round
ISSUE = "2026-10"
# Long enough for a slow machine, short enough to say "stuck" well within the test's minute.
PHASE_TIMEOUT = 45.0


@dataclass
class GatedSink(SinkHandler):
    """A sink whose replies can be held back (``hold``), counting the messages that reached
    DATA per EHLO name: while replies are held, those are all in flight at once."""

    hold: threading.Event | None = field(default_factory=threading.Event)
    arrived: Counter[str] = field(default_factory=Counter)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.arrived[session.host_name or ""] += 1
        return await super().handle_DATA(server, session, envelope)

    def handed_over(self) -> Counter[str]:
        """Messages answered so far, per EHLO name (per run of a sender)."""
        with self.lock:
            return Counter(r.helo for r in self.received)


@dataclass
class SenderSlot:
    """One of the four senders: its runs, and the one under way."""

    number: int
    runs: int = 0
    kills: int = 0
    process: subprocess.Popen[bytes] | None = None
    helo: str = ""
    kill_after: int = 0  # messages this run hands over before its kill is armed
    kill_at: float | None = None

    def start(self, folder: Path, provider: str, issue: Path) -> None:
        self.runs += 1
        self.helo = f"sender{self.number}-run{self.runs}.test"
        config = folder / f"{self.helo}.toml"
        config.write_text(f'{provider}local_hostname = "{self.helo}"\n', "utf-8")
        self.process = subprocess.Popen(
            _newsletter(config, "send", "--yes", str(issue)),
            env=_sender_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.kill_at = None

    def ended_by_itself(self) -> bool:
        if self.process is None or self.process.poll() is None:
            return False
        assert self.process.returncode == 0, f"{self.helo} failed"
        self.process = None
        return True

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None
        self.kills += 1


def _newsletter(config: Path, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "newsletter", "--config", str(config), *arguments]


def _sender_env() -> dict[str, str]:
    # The secret comes from the folder's file, as in the SQLite crash test; the store from
    # NEWSLETTER_DATABASE_URL, which the test sets.
    return {k: v for k, v in os.environ.items() if k != "NEWSLETTER_SECRET"}


def _kill_round(
    slots: list[SenderSlot],
    sink: GatedSink,
    rng: random.Random,
    start: Callable[[SenderSlot], None],
) -> set[str]:
    """Start every sender; once all four have a message in flight at the same moment, let
    them send, and kill each at a random point. The EHLO names of the runs killed."""
    assert sink.hold is not None
    sink.hold.clear()
    for slot in slots:
        slot.kill_after = rng.randint(2, 9)
        start(slot)
    deadline = time.monotonic() + PHASE_TIMEOUT
    while not all(sink.arrived[slot.helo] for slot in slots):
        assert not any(slot.ended_by_itself() for slot in slots), "a sender stopped early"
        assert time.monotonic() < deadline, f"not all senders got going: {sink.arrived}"
        time.sleep(0.005)  # waiting for real processes to start and claim
    sink.hold.set()
    killed = set()
    while any(slot.process is not None for slot in slots):
        assert time.monotonic() < deadline, "the senders made no progress"
        handed_over = sink.handed_over()
        for slot in slots:
            if slot.process is None or slot.ended_by_itself():
                continue
            now = time.monotonic()
            if slot.kill_at is None and handed_over[slot.helo] >= slot.kill_after:
                # A little further on, at a random instant between two replies.
                slot.kill_at = now + rng.uniform(0, 0.01)
            if slot.kill_at is not None and now >= slot.kill_at:
                slot.kill()
                killed.add(slot.helo)
        time.sleep(0.002)  # polling real processes and a real server
    return killed


def _final_round(slots: list[SenderSlot], start: Callable[[SenderSlot], None]) -> None:
    """All four senders once more, side by side, never killed: the issue is done after."""
    for slot in slots:
        start(slot)
    for slot in slots:
        assert slot.process is not None
        assert slot.process.wait(PHASE_TIMEOUT) == 0, f"{slot.helo} failed"
        slot.process = None


def _interleaved_pairs(received: list[Received]) -> set[tuple[str, str]]:
    """Pairs (A, B) of runs where B handed over a message between two of A's: A was in the
    middle of its run, connected and sending, while B sent too."""
    stream = sorted(received, key=lambda r: r.at)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for index, message in enumerate(stream):
        first.setdefault(message.helo, index)
        last[message.helo] = index
    pairs = set()
    for index, message in enumerate(stream):
        for helo in first:
            if helo != message.helo and first[helo] < index < last[helo]:
                pairs.add((helo, message.helo))
    return pairs


def test_four_senders_killed_at_random_points_never_duplicate_and_never_skip(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", postgres_url)
    rng = random.Random(20261123)
    sink = GatedSink(delay=0.004, keep_content=False)
    with smtp_server(sink) as port:
        provider = plain_smtp(port, CONNECTIONS)
        _, issue = make_folder(tmp_path, provider, SUBSCRIBERS)
        slots = [SenderSlot(number) for number in range(1, SENDERS + 1)]

        def start(slot: SenderSlot) -> None:
            slot.start(tmp_path, provider, issue)

        killed: set[str] = set()
        try:
            for _ in range(ROUNDS):
                killed |= _kill_round(slots, sink, rng, start)
            kills = sum(slot.kills for slot in slots)
            assert kills == ROUNDS * SENDERS, [slot.kills for slot in slots]
            _final_round(slots, start)
            final_runs = {slot.helo for slot in slots}
        finally:
            for slot in slots:
                if slot.process is not None and slot.process.poll() is None:
                    slot.process.kill()
                    slot.process.wait()
        status = subprocess.run(
            _newsletter(tmp_path / "newsletter.toml", "status", ISSUE),
            env=_sender_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr

    conn = open_store(postgres_url, create=False)
    try:
        emails = {int(i): str(e) for i, e in conn.execute("SELECT id, email FROM subscribers")}
        states = {
            int(i): str(s)
            for i, s in conn.execute(
                "SELECT subscriber_id, state FROM journal WHERE issue = ?", (ISSUE,)
            )
        }
    finally:
        conn.close()
    # Nobody skipped: every subscriber has a row, sent or left uncertain by a kill.
    assert set(states) == set(emails)
    assert set(states.values()) <= {"sent", "sending"}, Counter(states.values())
    uncertain = {i for i, state in states.items() if state == "sending"}
    assert len(uncertain) <= kills * CONNECTIONS

    received = Counter(r.rcpt_tos[0] for r in sink.received)
    assert set(received) <= set(emails.values())
    for subscriber_id, address in emails.items():
        if subscriber_id in uncertain:
            assert received[address] <= 1, address
        else:
            assert received[address] == 1, (address, received[address])
    sender_of = {r.rcpt_tos[0]: r.helo for r in sink.received}
    for subscriber_id in uncertain:
        address = emails[subscriber_id]
        # Only a killed run leaves a row uncertain.
        assert address not in sender_of or sender_of[address] in killed, address
        assert f"uncertain: {address} (subscriber {subscriber_id})" in status.stdout
    assert (
        f"{ISSUE}: 0 queued, {len(uncertain):,} sending, {SUBSCRIBERS - len(uncertain):,} sent, "
        "0 failed, 0 deferred; 0 active subscribers not yet queued"
    ) in status.stdout

    # Side by side. In each kill round all four senders had a message in flight at one moment
    # (the sink held its replies until they had), and each run handed over some before its
    # kill. In the final round, runs handed over messages in the middle of each other's.
    runs_that_sent = {r.helo for r in sink.received}
    assert killed <= runs_that_sent, killed - runs_that_sent
    pairs = _interleaved_pairs(sink.received)
    assert len({run for pair in pairs for run in pair} & final_runs) >= 2, pairs
