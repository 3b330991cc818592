"""A disk that fills up during a send: the journal tells the truth and the message says how to
resume. The disk is a real one: a small tmpfs mounted for the test (the tests run as root)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from newsletter.backup import backup_store
from newsletter.errors import SendError, StoreError
from newsletter.journal import JournalState
from newsletter.send import Progress, SendOptions
from newsletter.status import issue_status
from newsletter.store import open_store

from .sending_helpers import make_folder, run_send

MountDisk = Callable[[str], Path]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[MountDisk]:
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.fail("the full-disk tests mount a small tmpfs and need root, as in CI")
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], check=True
        )
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def _resize(point: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(point)], check=True)


def _states(database: Path) -> dict[str, int]:
    with closing(open_store(database, create=False)) as conn:
        rows = conn.execute("SELECT state, count(*) FROM journal GROUP BY state").fetchall()
    return {str(state): int(n) for state, n in rows}


def test_an_outbox_on_a_full_disk_records_exactly_what_was_written(
    tmp_path: Path, small_disk: MountDisk
) -> None:
    disk = small_disk("1m")
    settings, issue = make_folder(
        tmp_path, f'[provider]\nname = "outbox"\n[paths]\nbuild = "{disk}"\n', 200
    )
    with pytest.raises(SendError) as stopped:
        run_send(settings, issue, SendOptions(sleep=lambda seconds: None))
    message = str(stopped.value)
    assert "No space left on device" in message
    assert "run the same command again to resume" in message
    outbox = disk / "outbox" / "2026-10"
    written = sorted(outbox.glob("*.eml"))
    assert 0 < len(written) < 200
    assert not list(outbox.glob("*.tmp"))
    states = _states(settings.paths.database)
    assert states.get("sent") == len(written)
    assert "sending" not in states  # nothing uncertain: the outbox knows what it wrote
    index = outbox / "index.html"
    assert not index.exists() or index.read_text("utf-8").endswith("</html>\n")

    _resize(disk, "64m")  # space freed
    report = run_send(settings, issue, SendOptions(sleep=lambda seconds: None))
    assert report.sent == 200 - len(written) and report.uncertain == []
    assert len(list(outbox.glob("*.eml"))) == 200
    assert _states(settings.paths.database) == {"sent": 200}


def test_a_store_whose_disk_fills_mid_send_says_what_was_recorded_and_resumes(
    tmp_path: Path, small_disk: MountDisk
) -> None:
    disk = small_disk("8m")
    settings, issue = make_folder(
        disk,
        f'[provider]\nname = "null"\nbatch_size = 100\n[paths]\nbuild = "{tmp_path / "build"}"\n',
        3000,
    )
    filler = disk / "filler"

    def fill_the_disk(progress: Progress) -> None:
        if progress.done >= 300 and not filler.exists():
            # (Closing fails too when the last write left bytes in the buffer, which depends
            # on how much room the store left: either way the disk is full.)
            with contextlib.suppress(OSError), filler.open("wb") as handle:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()

    with pytest.raises(SendError) as stopped:
        run_send(settings, issue, SendOptions(), on_progress=fill_the_disk)
    message = str(stopped.value)
    assert "could not be written in the middle of the send" in message
    assert "nothing was changed" not in message  # that was true of one statement, not the run
    recorded = int(re.search(r"handed over and recorded ([\d,]+)", message)[1].replace(",", ""))  # type: ignore[index]
    uncertain = re.search(r"The last ([\d,]+) messages?", message)
    in_flight = int(uncertain[1].replace(",", "")) if uncertain else 0

    filler.unlink()  # space freed; now the journal can be read back as it was left
    states = _states(settings.paths.database)
    assert states.get("sent", 0) == recorded >= 300
    assert states.get("sending", 0) == in_flight
    assert sum(states.values()) == 3000

    report = run_send(settings, issue, SendOptions(resend_uncertain=True))
    assert report.sent == 3000 - recorded
    assert issue_status(settings, "2026-10").counts[JournalState.SENT] == 3000


def test_no_room_for_the_send_lock_is_a_clear_error_before_anything_is_sent(
    tmp_path: Path, small_disk: MountDisk
) -> None:
    disk = small_disk("8m,nr_inodes=64")
    settings, issue = make_folder(disk, '[provider]\nname = "null"\n', 5)
    # An open connection (the web app's, say) keeps the store's -wal and -shm files in place.
    keeper = open_store(settings.paths.database)
    keeper.execute("SELECT count(*) FROM subscribers").fetchone()
    # Use up every inode: no new file (the lock beside the store) can be made.
    for n in range(100):
        try:
            (disk / f"filler{n}").touch()
        except OSError:
            break
    else:
        pytest.fail("the small disk never ran out of inodes")
    with pytest.raises(SendError, match="cannot create the lock") as stopped:
        run_send(settings, issue, SendOptions())
    assert "nothing was sent" in str(stopped.value)
    assert "No space left on device" in str(stopped.value)
    assert keeper.execute("SELECT count(*) FROM journal").fetchone() == (0,)
    keeper.close()


def test_a_store_whose_disk_has_no_room_for_its_side_files_says_the_disk_is_full(
    tmp_path: Path, small_disk: MountDisk
) -> None:
    disk = small_disk("8m,nr_inodes=64")
    settings, issue = make_folder(disk, '[provider]\nname = "null"\n', 5)
    for n in range(100):
        try:
            (disk / f"filler{n}").touch()
        except OSError:
            break
    with pytest.raises(StoreError, match="the disk holding the store is full"):
        run_send(settings, issue, SendOptions())


def test_a_backup_to_a_full_disk_blames_that_disk_and_leaves_nothing(
    tmp_path: Path, small_disk: MountDisk
) -> None:
    settings, _issue = make_folder(tmp_path / "site", '[provider]\nname = "null"\n', 3000)
    target_disk = small_disk("64k")
    with pytest.raises(StoreError) as failed:
        backup_store(settings, target_disk / "copy.db")
    message = str(failed.value)
    assert message.startswith(f"{target_disk}: cannot write the backup there")
    assert str(settings.paths.database) not in message
    assert list(target_disk.iterdir()) == []


def test_a_backup_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    settings, _issue = make_folder(tmp_path / "site", '[provider]\nname = "null"\n', 3)
    old = os.umask(0o022)
    try:
        made = backup_store(settings, tmp_path / "copy.db")
    finally:
        os.umask(old)
    assert made.target.stat().st_mode & 0o777 == 0o600
