"""Scheduled sends and `run-due`, against a real SMTP server and the real store.

Time is a fake clock handed to the library (never a real sleep); the tests that start
`newsletter run-due` as processes schedule the send in the past of the real clock instead.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from newsletter.cli import main
from newsletter.due import run_due
from newsletter.errors import InvalidInput, SettingsError
from newsletter.journal import JournalState
from newsletter.schedule import (
    DueOptions,
    list_schedules,
    parse_moment,
    parse_zone,
    schedule_issue,
    schedule_settings,
    send_due,
)
from newsletter.settings import Settings, load_settings
from newsletter.status import issue_status

from .sending_helpers import make_folder
from .smtp_servers import SinkHandler, free_port, smtp_server

# The same tests on both stores (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("store_backend")

NOVEMBER = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _folder(
    tmp_path: Path, port: int, count: int, extra: str = "", batch_size: int = 5
) -> tuple[Settings, Path]:
    provider = (
        f'[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = {port}\n'
        f'security = "none"\nbatch_size = {batch_size}\n' + extra
    )
    return make_folder(tmp_path, provider, count)


def _received(handler: SinkHandler) -> Counter[str]:
    return Counter(r.rcpt_tos[0] for r in handler.received)


def _everyone(count: int) -> set[str]:
    return {f"reader{n}@example.net" for n in range(1, count + 1)}


def test_a_scheduled_send_goes_out_when_due_and_only_once(tmp_path: Path) -> None:
    handler = SinkHandler(keep_content=False)
    with smtp_server(handler) as port:
        settings, issue = _folder(tmp_path, port, 12)
        clock = FakeClock(NOVEMBER)
        made = schedule_issue(settings, issue, "2026-12-01 07:00", "Europe/Zurich", clock=clock)
        assert made.due_at == datetime(2026, 12, 1, 6, 0, tzinfo=UTC)  # CET is UTC+1
        clock.now = datetime(2026, 12, 1, 5, 59, tzinfo=UTC)
        assert send_due(settings, DueOptions(clock=clock)) == []
        assert handler.count == 0
        clock.now = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
        (done,) = send_due(settings, DueOptions(clock=clock))
        assert done.outcome == "sent"
        clock.now += timedelta(minutes=5)
        assert send_due(settings, DueOptions(clock=clock)) == []  # sent: not due any more
    assert _received(handler) == Counter(dict.fromkeys(_everyone(12), 1))
    (row,) = list_schedules(settings)
    assert (row.state, row.reason) == ("sent", "")


def test_two_run_due_processes_at_the_same_moment_send_once(tmp_path: Path) -> None:
    handler = SinkHandler(delay=0.002, keep_content=False)
    with smtp_server(handler) as port:
        settings, issue = _folder(tmp_path, port, 60)
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        schedule_issue(
            settings,
            issue,
            (an_hour_ago + timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M"),
            "UTC",
            clock=FakeClock(an_hour_ago),
        )
        command = [
            sys.executable,
            "-m",
            "newsletter",
            "--config",
            str(tmp_path / "newsletter.toml"),
            "run-due",
        ]
        env = {k: v for k, v in os.environ.items() if k != "NEWSLETTER_SECRET"}
        start = threading.Barrier(2)
        results: list[subprocess.CompletedProcess[str]] = []

        def run() -> None:
            start.wait()
            results.append(subprocess.run(command, env=env, capture_output=True, text=True))

        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert _received(handler) == Counter(dict.fromkeys(_everyone(60), 1))
    outputs = " ".join(r.stdout for r in results)
    assert "scheduled send of 2026-10: sent" in outputs
    assert issue_status(settings, "2026-10").counts[JournalState.SENT] == 60
    (row,) = list_schedules(settings)
    assert row.state == "sent"


def test_the_send_window_pauses_a_long_send_and_resumes_it_inside(tmp_path: Path) -> None:
    handler = SinkHandler(keep_content=False)
    with smtp_server(handler) as port:
        settings, issue = _folder(
            tmp_path,
            port,
            40,
            '[schedule]\ntimezone = "Europe/Zurich"\nwindow = "07:00-20:00"\n',
        )
        schedule_issue(settings, issue, "2026-12-01 19:45", clock=FakeClock(NOVEMBER))
        # Each message the relay accepts moves the clock on a minute: 15 fit before 20:00.
        due = datetime(2026, 12, 1, 18, 45, tzinfo=UTC)

        def clock() -> datetime:
            return due + timedelta(minutes=handler.count)

        (first,) = send_due(settings, DueOptions(clock=clock))
        assert first.outcome == "paused"
        assert 15 <= handler.count < 40  # stopped at the first batch boundary after 20:00
        sent_before_the_night = handler.count
        (row,) = list_schedules(settings)
        assert row.state == "scheduled"
        assert "outside the send window 07:00-20:00 (Europe/Zurich)" in row.reason

        night = FakeClock(datetime(2026, 12, 1, 23, 30, tzinfo=UTC))  # 00:30 in Zurich
        (waiting,) = send_due(settings, DueOptions(clock=night))
        assert waiting.outcome == "waiting"
        assert handler.count == sent_before_the_night

        morning = FakeClock(datetime(2026, 12, 2, 6, 5, tzinfo=UTC))  # 07:05 in Zurich
        (resumed,) = send_due(settings, DueOptions(clock=morning))
        assert resumed.outcome == "sent"
    assert _received(handler) == Counter(dict.fromkeys(_everyone(40), 1))
    assert list_schedules(settings)[0].state == "sent"


def test_an_issue_broken_after_scheduling_is_not_sent_and_the_reason_is_listed(
    tmp_path: Path,
) -> None:
    handler = SinkHandler(keep_content=False)
    with smtp_server(handler) as port:
        settings, issue = _folder(tmp_path, port, 5)
        schedule_issue(settings, issue, "2026-12-01 07:00", "UTC", clock=FakeClock(NOVEMBER))
        good = issue.read_text("utf-8")
        issue.write_text(good.replace("## Practice Implications", "## Practical notes"), "utf-8")
        clock = FakeClock(datetime(2026, 12, 1, 7, 1, tzinfo=UTC))
        report = run_due(settings, options=DueOptions(clock=clock))
        (blocked,) = report.sends
        assert blocked.outcome == "blocked"
        assert handler.count == 0
        assert issue_status(settings, "2026-10").started is False

        runner = CliRunner()
        config = ["--config", str(tmp_path / "newsletter.toml")]
        listed = runner.invoke(main, [*config, "schedule", "--list"])
        assert listed.exit_code == 0
        assert "2026-10" in listed.output and "scheduled" in listed.output
        assert "not sent:" in listed.output and "Practice Implications" in listed.output

        issue.write_text(good, "utf-8")  # fixed: the next run-due sends it
        (sent,) = run_due(settings, options=DueOptions(clock=clock)).sends
        assert sent.outcome == "sent"
    assert _received(handler) == Counter(dict.fromkeys(_everyone(5), 1))


def test_run_due_exits_1_when_a_scheduled_send_is_blocked(tmp_path: Path) -> None:
    settings, issue = make_folder(tmp_path, '[provider]\nname = "null"\n', 2)
    schedule_issue(
        settings,
        issue,
        "2026-01-01 07:00",
        "UTC",
        clock=FakeClock(datetime(2025, 1, 1, tzinfo=UTC)),
    )
    issue.write_text("---\nmonth: 2026-10\n---\nno articles\n", "utf-8")
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "newsletter.toml"), "run-due"])
    assert result.exit_code == 1
    assert "scheduled send of 2026-10: blocked: not sent:" in result.output
    assert "did not start" in result.output


class HoldOne(SinkHandler):
    """A relay that takes its time over the ``nth`` message, so the test can kill the sender."""

    def __init__(self, nth: int):
        super().__init__(keep_content=False)
        self.nth = nth
        self.arrivals = 0
        self.arrived = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.arrivals += 1
            mine = self.arrivals
        if mine == self.nth:
            self.arrived.set()
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 30)
        return await super().handle_DATA(server, session, envelope)


def test_a_killed_run_due_resumes_on_the_next_with_nobody_lost_or_sent_twice(
    tmp_path: Path,
) -> None:
    handler = HoldOne(nth=23)
    with smtp_server(handler) as port:
        # One message per batch: the kill leaves exactly the one in flight uncertain.
        settings, issue = _folder(tmp_path, port, 50, batch_size=1)
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        schedule_issue(
            settings,
            issue,
            (an_hour_ago + timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M"),
            "UTC",
            clock=FakeClock(an_hour_ago),
        )
        command = [
            sys.executable,
            "-m",
            "newsletter",
            "--config",
            str(tmp_path / "newsletter.toml"),
            "run-due",
        ]
        env = {k: v for k, v in os.environ.items() if k != "NEWSLETTER_SECRET"}
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        assert handler.arrived.wait(60), "the send never reached the 23rd message"
        process.send_signal(signal.SIGKILL)
        assert process.wait(30) == -signal.SIGKILL
        # The relay never answered the 23rd DATA: like any relay whose client vanished
        # before the reply, it drops the message. Its row stays "sending": uncertain.
        (row,) = list_schedules(settings)
        assert row.state == "scheduled"  # the kill left it to the next run

        final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert final.returncode == 0, final.stderr
        assert "scheduled send of 2026-10: sent: 1 uncertain" in final.stdout
        assert "uncertain: reader23@example.net (subscriber 23)" in final.stdout  # named
        received = _received(handler)
        assert received["reader23@example.net"] == 0  # not resent behind anyone's back
        assert received == Counter(dict.fromkeys(_everyone(50) - {"reader23@example.net"}, 1))
        counts = issue_status(settings, "2026-10").counts
        assert (counts[JournalState.SENT], counts[JournalState.SENDING]) == (49, 1)

        # The admin checks the relay's log, finds it never took the message, and resends it.
        resend = subprocess.run(
            [*command[:-1], "send", "--yes", "--resend-uncertain", str(issue)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        handler.release.set()
    assert resend.returncode == 0, resend.stderr
    assert _received(handler) == Counter(dict.fromkeys(_everyone(50), 1))  # 0 lost, 0 twice
    assert issue_status(settings, "2026-10").counts[JournalState.SENT] == 50


def test_schedule_refuses_the_past_unknown_zones_and_skipped_hours(tmp_path: Path) -> None:
    settings, issue = make_folder(tmp_path, '[provider]\nname = "null"\n', 1)
    with pytest.raises(InvalidInput, match="in the past"):
        schedule_issue(settings, issue, "2026-11-01 07:00", "UTC", clock=FakeClock(NOVEMBER))
    with pytest.raises(InvalidInput, match="not a time zone"):
        parse_zone("Mars/Olympus")
    with pytest.raises(InvalidInput, match="does not exist in Europe/Zurich"):
        parse_moment("2027-03-28 02:30", parse_zone("Europe/Zurich"))
    with pytest.raises(InvalidInput, match="YYYY-MM-DD HH:MM"):
        parse_moment("tomorrow", parse_zone("UTC"))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('timezone = "Mars/Olympus"', "schedule.timezone: 'Mars/Olympus' is not a time zone"),
        (
            'window = "7 to 8"',
            'schedule.window: must be the hours sends may run, such as "07:00-20:00"',
        ),
        ('window = "25:00-07:00"', "schedule.window: must be the hours"),
        ('window = "07:00-07:00"', "start and end are the same"),
        ("windows = 1", "schedule.windows: unknown key"),
    ],
    ids=["zone", "window-words", "window-hour", "window-empty", "typo"],
)
def test_the_schedule_table_is_validated(tmp_path: Path, table: str, message: str) -> None:
    (tmp_path / "newsletter.toml").write_text(f"[schedule]\n{table}\n", "utf-8")
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        schedule_settings(load_settings(tmp_path / "newsletter.toml"))


def test_a_window_may_wrap_past_midnight(tmp_path: Path) -> None:
    (tmp_path / "newsletter.toml").write_text('[schedule]\nwindow = "22:00-06:00"\n', "utf-8")
    rules = schedule_settings(load_settings(tmp_path / "newsletter.toml"))
    assert rules.outside_window(datetime(2026, 12, 1, 23, 0, tzinfo=UTC)) == ""
    assert rules.outside_window(datetime(2026, 12, 1, 5, 59, tzinfo=UTC)) == ""
    assert "goes on at 22:00" in rules.outside_window(datetime(2026, 12, 1, 6, 0, tzinfo=UTC))


def test_unschedule_and_the_list_through_the_cli(tmp_path: Path) -> None:
    _, issue = make_folder(tmp_path, '[provider]\nname = "null"\n', 1)
    runner = CliRunner()
    config = ["--config", str(tmp_path / "newsletter.toml")]
    made = runner.invoke(
        main, [*config, "schedule", str(issue), "--at", "2099-12-01 07:00", "--tz", "Europe/Zurich"]
    )
    assert made.exit_code == 0, made.output
    assert (
        "2026-10 (issues/2026-10.md) scheduled for 2099-12-01 07:00 Europe/Zurich (2099-12-01 06:00 UTC)"
        in made.output
    )
    listed = runner.invoke(main, [*config, "schedule", "--list"])
    assert "2026-10  2099-12-01 07:00 Europe/Zurich  scheduled  issues/2026-10.md" in listed.output
    gone = runner.invoke(main, [*config, "unschedule", "2026-10"])
    assert gone.exit_code == 0 and "no longer scheduled" in gone.output
    assert runner.invoke(main, [*config, "schedule", "--list"]).output == "nothing is scheduled\n"
    again = runner.invoke(main, [*config, "unschedule", "2026-10"])
    assert again.exit_code == 1 and "is not scheduled" in again.output


def test_a_relay_that_is_down_stops_the_run_and_the_next_run_due_resumes(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there yet
    settings, issue = _folder(tmp_path, port, 8)
    schedule_issue(settings, issue, "2026-12-01 07:00", "UTC", clock=FakeClock(NOVEMBER))
    clock = FakeClock(datetime(2026, 12, 1, 7, 0, tzinfo=UTC))
    (stopped,) = send_due(settings, DueOptions(clock=clock))
    assert stopped.outcome == "blocked"
    assert (
        stopped.reason.startswith("stopped: ") and "the next run-due resumes it" in stopped.reason
    )
    assert list_schedules(settings)[0].reason == stopped.reason
    handler = SinkHandler(keep_content=False)
    with smtp_server(handler, port=port):
        (sent,) = send_due(settings, DueOptions(clock=clock))
    assert sent.outcome == "sent"
    assert _received(handler) == Counter(dict.fromkeys(_everyone(8), 1))
