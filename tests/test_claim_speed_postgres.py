"""A send's claims on PostgreSQL are quick from the first batch, even on a store just filled.

PostgreSQL plans a query by its statistics, which know nothing of rows added since the last
ANALYZE (autovacuum's comes a minute or more later): a list just imported or copied, an issue
just queued. Planned blind, the claim's join read every remaining row for each batch: 2 to 3
seconds a claim for 3,000 subscribers (3 messages a second), and worse as lists grow.
"""

from __future__ import annotations

import statistics
import time
from contextlib import closing
from pathlib import Path

import pytest

from newsletter.journal import Resend, SendJournal
from newsletter.store import open_store

from .sending_helpers import make_folder

SUBSCRIBERS = 3000
# A claim of a batch reads a few rows; one that reads the whole list took 2 s or more here.
QUICK = 0.25


def test_claims_on_a_store_just_filled_do_not_read_the_whole_list(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", postgres_url)
    make_folder(tmp_path, '[provider]\nname = "null"\n', SUBSCRIBERS)
    with closing(open_store(postgres_url, create=False)) as conn:
        journal = SendJournal(conn, "2026-10")
        journal.start_run((), Resend())
        durations = []
        last = 0
        for _ in range(5):
            started = time.perf_counter()
            rows = journal.claim_batch(4, "smtp", after_id=last)
            durations.append(time.perf_counter() - started)
            last = rows[-1][0]
    assert statistics.median(durations) < QUICK, durations
