"""Files of personal data or secrets are created readable by their owner only, whatever the umask.

The store, the outbox (each message carries a working unsubscribe link) and the signing secret
must not be readable by the other users of a shared machine. SQLite creates the store's -wal
and -shm files with the store's own permissions, so creating the store owner-only covers them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_MODE = 0o600
PRIVATE_FOLDER_MODE = 0o700


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, replacing what is there, readable by the owner only."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE)
    with open(descriptor, "wb") as handle:
        # os.open's mode applies only to a new file: an existing one is tightened too.
        os.fchmod(handle.fileno(), PRIVATE_MODE)
        handle.write(data)


def create_private(path: Path) -> None:
    """Create ``path`` empty and owner-only, unless it exists (then it is left alone)."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    except FileExistsError:
        return
    os.close(descriptor)


def make_private_folder(path: Path) -> None:
    """``mkdir -p path``, the last folder owner-only when it is new."""
    path.mkdir(mode=PRIVATE_FOLDER_MODE, parents=True, exist_ok=True)


def exposed_mode(path: Path) -> str | None:
    """``path``'s permissions (e.g. "0644") when others than its owner may read or change it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    return f"{mode:04o}" if mode & 0o077 else None
