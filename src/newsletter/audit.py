"""The admin audit log: who did what to the list, and when.

Every import, export, remove, erase, manual status change and send is one row: the time, who
(the operating-system user running the command, or ``web`` for a reader's own request), the
action, a short detail (a file name, an address, an issue) and a count when one applies.
``newsletter audit [--since]`` prints it. Rows are only ever added.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass

from newsletter.store import StoreConnection, now_utc, transaction, translate_errors

WHO_WEB = "web"


@dataclass(frozen=True)
class AuditEntry:
    at: str
    who: str
    action: str
    detail: str
    count: int | None


def current_user() -> str:
    """The operating-system user running this process, or "unknown"."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (a container), no $USER
        return "unknown"


def record(
    conn: StoreConnection,
    action: str,
    detail: str = "",
    count: int | None = None,
    *,
    who: str | None = None,
    in_transaction: bool = False,
) -> None:
    """Add one row: in the caller's open transaction, or in one of its own."""
    values = (now_utc(), who or current_user(), action, detail[:500], count)
    sql = "INSERT INTO audit_log (at, who, action, detail, count) VALUES (?, ?, ?, ?, ?)"
    if in_transaction:
        conn.execute(sql, values)
        return
    with transaction(conn):
        conn.execute(sql, values)


def entries(conn: StoreConnection, *, since: str = "") -> list[AuditEntry]:
    """Rows at or after ``since`` (an ISO 8601 date or time, UTC; "" for all), oldest first."""
    with translate_errors(conn):
        rows = conn.execute(
            "SELECT at, who, action, detail, count FROM audit_log WHERE at >= ? ORDER BY at, id",
            (since,),
        ).fetchall()
    return [
        AuditEntry(str(r[0]), str(r[1]), str(r[2]), str(r[3]), None if r[4] is None else int(r[4]))
        for r in rows
    ]
