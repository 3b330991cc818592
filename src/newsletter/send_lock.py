"""One send of an issue at a time on this machine: an operating-system lock beside the store.

Two runs could not mark the same journal row, but a second one would report the first one's
in-flight messages as uncertain, and with --resend-uncertain send them again. The lock is
the operating system's (``flock``), so a killed send releases it by dying.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from newsletter.errors import SendBusy, SendError


def lock_path(database: Path, month: str) -> Path:
    return database.with_name(f"{database.name}.send-{month}.lock")


@contextmanager
def send_lock(database: Path, month: str) -> Iterator[None]:
    """Hold the lock for sending ``month`` from the store at ``database``; SendError if taken."""
    path = lock_path(database, month)
    try:
        handle = open(path, "a+")  # noqa: SIM115 (closed by the with block below)
    except OSError as exc:
        raise SendError(
            f"{path}: cannot create the lock that keeps two sends of {month} apart "
            f"({exc.strerror}); nothing was sent. Check the folder's permissions and free space."
        ) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise SendBusy(
                f"another send of {month} is running ({holder}); wait for it to finish, "
                "or stop it, then run this command again"
            ) from None
        _write_holder(handle)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_holder(handle: IO[str]) -> None:
    # Only informs whoever finds the lock taken; on a full disk the lock itself still holds.
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
    except OSError:
        pass
