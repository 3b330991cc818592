"""Who may send an issue at the same time.

On SQLite: one send of an issue at a time, by an operating-system lock beside the store.
Two runs could not claim the same journal row, but a second one would report the first one's
in-flight messages as uncertain, and with --resend-uncertain send them again. The lock is
the operating system's (``flock``), so a killed send releases it by dying.

On PostgreSQL several senders, on any machines, share an issue: the journal's claims keep
them apart (``SendJournal.claim_batch``). Each holds the issue's advisory lock in shared
mode for its run, and a run that puts rows back in the queue (``--resend-uncertain``,
``--retry-failed``) needs it alone, since another sender's in-flight rows look exactly like
uncertain ones. A killed sender's session ends with its connection, and its lock with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from newsletter.errors import SendBusy, SendError, StoreError
from newsletter.store import StoreConnection, translate_errors


def lock_path(database: Path, month: str) -> Path:
    return database.with_name(f"{database.name}.send-{month}.lock")


@dataclass
class SendLock:
    """The lock a run holds; asks whether other senders of the issue are running too."""

    conn: StoreConnection
    key: int | None = None  # the advisory lock's key on PostgreSQL

    def others_running(self) -> bool:
        if self.key is None:
            return False  # SQLite: the lock is this run's alone
        from newsletter import postgres

        with translate_errors(self.conn):
            if postgres.try_lock(self.conn, self.key):  # never waits; ours does not conflict
                postgres.unlock(self.conn, self.key)
                return False
        return True


def _advisory_key(month: str) -> int:
    from newsletter.postgres import SEND_LOCK_BASE

    return SEND_LOCK_BASE + zlib.crc32(month.encode())


@contextmanager
def send_lock(conn: StoreConnection, month: str, *, alone: bool = False) -> Iterator[SendLock]:
    """Hold the lock for sending ``month`` from the store of ``conn``; SendBusy if taken.

    ``alone``: this run must be the issue's only sender (it requeues rows); on SQLite every
    run is.
    """
    if conn.dialect == "postgresql":
        with _shared_issue_lock(conn, month, alone=alone) as lock:
            yield lock
        return
    database = Path(str(conn.path))
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
            yield SendLock(conn)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _shared_issue_lock(conn: StoreConnection, month: str, *, alone: bool) -> Iterator[SendLock]:
    from newsletter import postgres

    key = _advisory_key(month)
    with translate_errors(conn):
        taken = postgres.try_lock(conn, key, shared=not alone)
    if not taken:
        raise SendBusy(
            f"another send of {month} is running on this store"
            + (
                ", and this one puts rows back in the queue (--resend-uncertain or "
                "--retry-failed), which only a run that is the issue's only sender may do"
                if alone
                else " with --resend-uncertain or --retry-failed, which must run alone"
            )
            + "; wait for it to finish, or stop it, then run this command again"
        )
    try:
        yield SendLock(conn, key)
    finally:
        # A connection that broke has lost the lock with its session anyway.
        with contextlib.suppress(StoreError), translate_errors(conn):
            postgres.unlock(conn, key, shared=not alone)


def _write_holder(handle: IO[str]) -> None:
    # Only informs whoever finds the lock taken; on a full disk the lock itself still holds.
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
    except OSError:
        pass
