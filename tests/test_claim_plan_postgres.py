"""A send's claims on PostgreSQL are planned with statistics that know the rows just queued.

PostgreSQL plans a query by its statistics, which know nothing of rows added since the last
ANALYZE (autovacuum's comes a minute or more later): a list just imported or copied, an issue
just queued. Planned blind, the claim's join read every remaining row for each batch: 2 to 3
seconds a claim for 3,000 subscribers (3 messages a second), and worse as lists grow. So the
run analyses the tables once it has queued its rows; this checks that it did, and that the
claim's plan then goes to the rows through an index instead of reading the whole list.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest

from newsletter.journal import Resend, SendJournal
from newsletter.store import StoreConnection, open_store

from .sending_helpers import make_folder

SUBSCRIBERS = 3000


def known_rows(conn: StoreConnection, table: str) -> float:
    """What the planner believes ``table`` holds (-1 before its first ANALYZE)."""
    return float(
        conn.execute("SELECT reltuples FROM pg_class WHERE relname = ?", (table,)).fetchone()[0]
    )


def test_a_run_analyses_what_it_queued_before_its_first_claim(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", postgres_url)
    make_folder(tmp_path, '[provider]\nname = "null"\n', SUBSCRIBERS)
    with closing(open_store(postgres_url, create=False)) as conn:
        assert known_rows(conn, "journal") < SUBSCRIBERS  # nothing queued, nothing analysed
        journal = SendJournal(conn, "2026-10")
        journal.start_run((), Resend())
        assert known_rows(conn, "journal") == SUBSCRIBERS
        assert known_rows(conn, "subscribers") == SUBSCRIBERS
        plan = "\n".join(
            str(row[0])
            for row in conn.execute(
                "EXPLAIN SELECT s.id FROM journal AS j JOIN subscribers AS s "
                "ON s.id = j.subscriber_id WHERE j.issue = ? AND j.state IN ('queued', 'deferred') "
                "AND s.id > ? AND s.status = 'active' ORDER BY s.id LIMIT ?",
                ("2026-10", 0, 4),
            )
        )
        # Walks subscribers in id order through an index and stops at LIMIT; blind, it was a
        # nested loop reading every subscriber again for each journal row.
        assert "Index" in plan and "Seq Scan on subscribers" not in plan, plan
        assert [row[0] for row in journal.claim_batch(4, "smtp")] == [1, 2, 3, 4]
