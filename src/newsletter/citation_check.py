"""``newsletter check --citations``: each article's citation against its DOI's record.

A title, year, first author or journal that differs from the record is a warning (the author
may have a reason); a DOI that does not resolve, or an article the record says was retracted,
is an error. Records come through ``DoiClient``, so a re-check reads the on-disk cache and
works offline.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from newsletter.doi import DoiClient, DoiRecord, Update, same_text, surname
from newsletter.errors import DoiLookupError, DoiNotFound, Problem
from newsletter.issue import Article
from newsletter.parse import read_issue
from newsletter.settings import Settings


@dataclass
class CitationReport:
    problems: list[Problem] = field(default_factory=list)
    checked: int = 0  # citations compared with a record


def check_citations(
    path: Path, settings: Settings, *, offline: bool = False, client: DoiClient | None = None
) -> CitationReport:
    """Compare every article's citation that has a DOI with the DOI's record.

    An issue file with errors is left to the parser's messages: nothing is compared.
    """
    report = CitationReport()
    issue = read_issue(path, settings.taxonomy).issue
    if issue is None:
        return report
    lines = path.read_text("utf-8").splitlines()
    own = client or DoiClient(settings, offline=offline)
    try:
        for article in issue.articles:
            if not article.citation.doi:
                continue
            where = _FieldLines(str(path), lines, article.line)
            try:
                record = own.lookup(article.citation.doi)
            except DoiNotFound:
                report.problems.append(where.problem("doi", _not_found(article)))
                continue
            except DoiLookupError as exc:
                if offline:
                    report.problems.append(where.problem("doi", str(exc), "warning"))
                    continue
                # The network or the service is down: one message, not one per article.
                report.problems.append(
                    Problem(
                        str(path),
                        0,
                        f"citations not checked: {exc}; `newsletter check --offline "
                        "--citations` compares with the records cached so far",
                    )
                )
                break
            report.checked += 1
            report.problems.extend(_compare(article, record, where))
    finally:
        if client is None:
            own.close()
    return report


def _not_found(article: Article) -> str:
    doi = article.citation.doi
    return (
        f"DOI {doi} does not resolve: neither Crossref nor doi.org knows it; copy the DOI "
        "again from the article's page"
    )


def _compare(article: Article, record: DoiRecord, where: _FieldLines) -> list[Problem]:
    cited = article.citation
    found: list[Problem] = []
    source = f"the DOI's record ({record.registry})"
    # The publisher and Retraction Watch often record the same notice: say it once.
    notices: dict[str, list[Update]] = {}
    for retraction in record.retractions:
        notices.setdefault(retraction.notice, []).append(retraction)
    for same in notices.values():
        sources = ", ".join(u.source.replace("-", " ").title() for u in same if u.source)
        described = dataclasses.replace(same[0], source="").describe()
        found.append(
            where.problem(
                "doi",
                f"{cited.doi} was retracted ({described}"
                + (f"; recorded by {sources}" if sources else "")
                + "); remove the article, or write about the retraction and cite the notice",
            )
        )
    for concern in record.concerns:
        found.append(
            where.problem(
                "doi",
                f"{cited.doi} has an expression of concern ({concern.describe()}); say so in "
                "the summary",
                "warning",
            )
        )
    if record.title and not same_text(cited.title, _RETRACTED.sub("", record.title)):
        found.append(
            where.problem("title", f"Title differs from {source}: {record.title!r}", "warning")
        )
    if record.year and cited.year != record.year:
        found.append(
            where.problem(
                "year", f"Year {cited.year} differs from {source}: {record.year}", "warning"
            )
        )
    if record.authors and cited.authors:
        mine, theirs = surname(cited.authors[0]), surname(record.authors[0])
        if not same_text(mine, theirs):
            found.append(
                where.problem(
                    "authors",
                    f"the first author {mine!r} differs from {source}: {record.authors[0]!r}",
                    "warning",
                )
            )
    if record.journal and not same_text(_no_article(cited.journal), _no_article(record.journal)):
        found.append(
            where.problem(
                "journal", f"Journal differs from {source}: {record.journal!r}", "warning"
            )
        )
    return found


# Publishers prefix a retracted article's title; the author cites the title as published.
_RETRACTED = re.compile(r"^(retracted|withdrawn)\s*(article)?\s*[:.—–-]\s*", re.IGNORECASE)


def _no_article(journal: str) -> str:
    # "The Lancet" and "Lancet" are the same journal.
    return re.sub(r"^the\s+", "", journal.strip(), flags=re.IGNORECASE)


@dataclass
class _FieldLines:
    """Finds the line of a citation field within one article, for path:line messages."""

    path: str
    lines: list[str]
    head: int  # the article heading's line, 1-based

    def line(self, name: str) -> int:
        pattern = re.compile(rf"^\s*{re.escape(name)}\s*:", re.IGNORECASE)
        for number in range(self.head + 1, len(self.lines) + 1):
            text = self.lines[number - 1]
            if text.startswith("#"):
                break
            if pattern.match(text):
                return number
        return self.head

    def problem(self, name: str, message: str, severity: str = "error") -> Problem:
        return Problem(self.path, self.line(name), message, severity)
