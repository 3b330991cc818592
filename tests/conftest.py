"""Shared fixtures and helpers."""

from __future__ import annotations

import itertools
import os
import re
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from newsletter.database_url import DatabaseUrl, StoreLocation
from newsletter.messages import PreparedIssue, Recipient, prepare_issue
from newsletter.settings import Settings, load_settings

from .pg_cluster import PostgresCluster, PostgresClusterError

REPO = Path(__file__).resolve().parent.parent
# The monthly sample issues; the welcome email (issues/welcome.md) is read the same way, apart.
SAMPLE_ISSUES = sorted(p for p in (REPO / "issues").glob("*.md") if p.stem != "welcome")
WELCOME_SAMPLE = REPO / "issues" / "welcome.md"

VALID_ISSUE = """\
---
month: 2026-10
title: October 2026
subject: Ruptures, feedback and dropout
preheader: Three studies for the consulting room.
---
Dear [[name]], this month I write about ruptures in the alliance.

# Repairing ruptures helps
Authors: Eubanks, C. F.; Muran, J. C.; Safran, J. D.
Year: 2018
Title: Alliance rupture repair: A meta-analysis
Journal: Psychotherapy
Volume: 55(4)
Pages: 508–519
DOI: 10.1037/pst0000185
Topics: Alliance and Therapeutic Relationship; Common Factors
Research type: Meta-analysis

Repair was associated with outcome, r = .29 (β = −.31, R² = .13).

## Practice Implications
Notice ruptures and *talk* about them.

# Feedback reduces deterioration
Authors: Lambert, M. J.; Whipple, J. L.; Kleinstäuber, M.
Year: 2018
Title: Collecting and delivering progress feedback: A meta-analysis of routine outcome monitoring
Journal: Psychotherapy
Volume: 55(4)
Pages: 520–537
DOI: https://doi.org/10.1037/pst0000167
Topics: Feedback and Progress Monitoring

Clients whose therapists got feedback did better, d = 0.28.

## Practice Implications
- Measure every session.
- Look at the not-on-track alerts.
"""


@dataclass(frozen=True)
class IssueStandIn:
    month: str


@dataclass(frozen=True)
class RenderedIssue:
    """A light stand-in for newsletter.render.RenderedIssue, for message tests."""

    issue: IssueStandIn
    subject: str
    html: str
    text: str


SAMPLE_HTML = (
    '<!doctype html><html><head><meta charset="utf-8"></head><body>'
    '<p style="font-family:Georgia,serif;color:#1d1d1b">Dear [[name]],</p>'
    + '<p style="margin:0 0 12px 0;line-height:1.5">Ünïcode — “quoted” research. </p>'
    * 40
    + '<p>Sent to [[email]]. <a href="[[unsubscribe_url]]">Unsubscribe</a></p>'
    "</body></html>"
)
SAMPLE_TEXT = (
    "Dear [[name]],\n\n"
    + "A summary line of the research, with ünïcode — and dashes.\n" * 20
    + "\nSent to [[email]]. Unsubscribe: [[unsubscribe_url]]\n"
)


def make_rendered(
    *, subject: str = "March 2021: what helps", html: str = SAMPLE_HTML, text: str = SAMPLE_TEXT
) -> RenderedIssue:
    return RenderedIssue(IssueStandIn("2021-03"), subject, html, text)


def make_recipient(
    number: int = 1, *, name: str | None = None, email: str | None = None
) -> Recipient:
    return Recipient(
        id=number,
        email=email or f"reader{number}@example.net",
        name=f"Reader {number}" if name is None else name,
        unsubscribe_url=f"https://digest.example.org/unsubscribe/{number}?t=tok{number}&l=x",
    )


def write_settings(root: Path, extra: str = "") -> Settings:
    path = root / "newsletter.toml"
    path.write_text(
        "[newsletter]\n"
        'name = "Practice Research Digest"\n'
        'from_email = "digest@example.org"\n'
        'from_name = "Dr. Émilie Research"\n'
        'reply_to = "editor@example.org"\n' + extra,
        encoding="utf-8",
    )
    return load_settings(path)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A newsletter.toml with a non-ASCII sender name and a reply-to; defaults elsewhere."""
    return write_settings(tmp_path)


@pytest.fixture
def write_issue(tmp_path: Path) -> Callable[..., Path]:
    def write(
        text: str = VALID_ISSUE, name: str = "2026-10.md", *, raw: bytes | None = None
    ) -> Path:
        path = tmp_path / "issues" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if raw is not None:
            path.write_bytes(raw)
        else:
            path.write_text(textwrap.dedent(text), "utf-8")
        return path

    return write


@pytest.fixture
def prepared(settings: Settings) -> PreparedIssue:
    return prepare_issue(make_rendered(), settings)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One private PostgreSQL server for the whole session, started when a test first asks.

    Fails (never skips) when it cannot start: CI installs the server through the Makefile, and
    scripts/install-postgresql does it by hand.
    """
    cluster = PostgresCluster()
    problem = None
    try:
        cluster.start()
    except PostgresClusterError as error:
        problem = str(error)
    if problem is not None:
        pytest.fail(f"the tests' PostgreSQL server did not start: {problem}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


_database_numbers = itertools.count(1)


@pytest.fixture
def new_postgres_database(
    postgres_cluster: PostgresCluster, request: pytest.FixtureRequest
) -> Iterator[Callable[[], str]]:
    """Makes new, empty databases of the session's server for this test (copies of template0:
    UTF8, locale C, superuser postgres, no password) and returns their URLs; drops them after."""
    slug = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")
    made: list[str] = []

    def new() -> str:
        name = f"t{next(_database_numbers)}_{slug}"[:63].rstrip("_")
        url = postgres_cluster.new_database(name)
        made.append(name)
        return url

    try:
        yield new
    finally:
        for name in made:
            postgres_cluster.drop_database(name)


@pytest.fixture
def postgres_url(new_postgres_database: Callable[[], str]) -> str:
    """The URL of a new, empty database for this test alone, e.g.
    ``postgresql://postgres@127.0.0.1:PORT/t12_test_name``; dropped afterwards."""
    return new_postgres_database()


# --- The store on both backends ---------------------------------------------------------------
# A module that runs its tests on SQLite and on PostgreSQL alike says
# ``pytestmark = pytest.mark.usefixtures("store_backend")``: every test then runs twice, and
# every settings file it loads names the backend's store (NEWSLETTER_DATABASE_URL wins over
# [paths] database). A test that opens a store itself uses ``store_location``.

BACKENDS = ["sqlite", "postgresql"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A test about the SQLite file itself (its path, its locks, a damaged file) says so with
    # @pytest.mark.sqlite_file and runs once; every other test of such a module runs twice.
    # One about what only PostgreSQL does says @pytest.mark.postgresql_only.
    if "store_backend" in metafunc.fixturenames:
        backends = BACKENDS
        if metafunc.definition.get_closest_marker("sqlite_file") is not None:
            backends = ["sqlite"]
        elif metafunc.definition.get_closest_marker("postgresql_only") is not None:
            backends = ["postgresql"]
        metafunc.parametrize("store_backend", backends, indirect=True)


@pytest.fixture
def store_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "postgresql":
        monkeypatch.setenv("NEWSLETTER_DATABASE_URL", request.getfixturevalue("postgres_url"))
    else:
        monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)
    return str(request.param)


@pytest.fixture
def store_location(store_backend: str, tmp_path: Path) -> StoreLocation:
    """Where this test's store is: a SQLite file in tmp_path, or a fresh PostgreSQL database."""
    if store_backend == "postgresql":
        return DatabaseUrl(os.environ["NEWSLETTER_DATABASE_URL"])
    return tmp_path / "newsletter.db"


@pytest.fixture
def another_store(
    store_backend: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Callable[[], None]:
    """Call it before loading the settings of a second newsletter folder: on PostgreSQL it
    points the environment at a new, empty database (on SQLite the folder's file is new)."""

    def switch() -> None:
        if store_backend == "postgresql":
            new = request.getfixturevalue("new_postgres_database")
            monkeypatch.setenv("NEWSLETTER_DATABASE_URL", new())

    return switch


@contextmanager
def store_out_of_reach(location: StoreLocation) -> Iterator[None]:
    """While inside, the store cannot be used (its file moved away; on PostgreSQL, whose
    server the other tests share, its subscribers table renamed); put back on leaving."""
    if isinstance(location, Path):
        moved = location.with_name(location.name + ".moved-away")
        location.rename(moved)
        try:
            yield
        finally:
            moved.rename(location)
        return
    import psycopg

    with psycopg.connect(location.url, autocommit=True) as raw:
        raw.execute("ALTER TABLE subscribers RENAME TO subscribers_out_of_reach")
        try:
            yield
        finally:
            raw.execute("ALTER TABLE subscribers_out_of_reach RENAME TO subscribers")
