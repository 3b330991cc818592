"""`newsletter cite`, `newsletter new` and `check --citations` against a loopback Crossref."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner, Result
from werkzeug import Response

from newsletter.cli import main
from newsletter.draft import next_month
from newsletter.parse import read_issue
from newsletter.settings import Settings

from .crossref_server import Registries, doi_settings, registries

__all__ = ["doi_settings", "registries"]


Run = Callable[..., Result]


@pytest.fixture
def run(doi_settings: Settings) -> Iterator[Run]:
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(main, ["--config", str(doi_settings.source), *args])

    yield invoke


def test_cite_prints_the_lines_of_each_doi(run: Run) -> None:
    result = run(
        "cite", "https://doi.org/10.1080/10503307.2012.673023", "doi:10.5555/datacite.example"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "Authors: de Jong, K.; van Sluis, P.; Nugter, M. A.; Heiser, W. J.; Spinhoven, P.\n"
        "Year: 2012\n"
        "Title: Understanding the differential impact of outcome monitoring: Therapist variables "
        "that moderate feedback effects in a randomized clinical trial\n"
        "Journal: Psychotherapy Research\n"
        "Volume: 22(4)\n"
        "Pages: 464–474\n"
        "DOI: 10.1080/10503307.2012.673023\n"
        "\n"
        "Authors: van der Berg, M.; Çelik, A.\n"
        "Year: 2023\n"
        "Title: Session-by-session outcome data from a practice research network\n"
        "Journal: Zenodo\n"
        "DOI: 10.5555/datacite.example\n"
    )


def test_cite_prints_what_it_found_and_names_what_it_did_not(run: Run) -> None:
    result = run("cite", "10.1037/not-registered", "10.1176/appi.ajp.2008.07061028")
    assert result.exit_code == 1
    assert result.stdout.startswith("Authors: Høglend, P.;")
    assert result.stderr == (
        "Error: DOI 10.1037/not-registered is not registered: neither Crossref nor doi.org "
        "knows it; check it against the article (https://doi.org/10.1037/not-registered)\n"
    )


def test_cite_warns_of_a_retraction(run: Run) -> None:
    result = run("cite", "10.1016/S0140-6736(97)11096-0")
    assert result.exit_code == 0
    assert "DOI: 10.1016/S0140-6736(97)11096-0" in result.stdout
    assert "# RETRACTED (notice 10.1016/S0140-6736(10)60175-4, 2010-02-06" in result.stderr


def test_cite_rate_limited_is_a_message_not_a_traceback(run: Run, registries: Registries) -> None:
    doi = "10.1176/appi.ajp.2008.07061028"
    registries.queued[doi] = [lambda: Response("", status=429, headers={"Retry-After": "600"})]
    result = run("cite", doi)
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: Crossref is limiting requests (HTTP 429) and asks to wait 600 s before asking "
        f"for {doi} again; try again later\n"
    )
    assert "Traceback" not in result.output


def test_new_starts_an_issue_whose_citations_need_only_topics(
    run: Run, doi_settings: Settings
) -> None:
    result = run(
        "new",
        "2027-01",
        "--doi",
        "10.1176/appi.ajp.2008.07061028",
        "--doi",
        "10.1016/S2215-0366(18)30162-7",
    )
    assert result.exit_code == 0, result.output
    path = doi_settings.paths.issues / "2027-01.md"
    assert result.stdout.startswith(f"created {path}\n")
    text = path.read_text("utf-8")
    assert text.startswith("---\nmonth: 2027-01\ntitle: January 2027\nsubject: ")
    assert text.count("## Practice Implications") == 2
    assert "Online first: yes\nDOI: 10.1016/S2215-0366(18)30162-7\nTopics: \n" in text
    # What is left to the author is exactly what check asks for: the topics.
    problems = [p.message for p in read_issue(path).problems if p.severity == "error"]
    assert problems == ["Topics is empty; name one or more topics, separated by ';'"] * 2
    again = run("new", "2027-01")
    assert again.exit_code == 1
    assert f"Error: {path} already exists; edit it, or name another month" in again.stderr


def test_new_without_a_month_starts_next_month(run: Run, doi_settings: Settings) -> None:
    result = run("new")
    assert result.exit_code == 0, result.output
    assert (doi_settings.paths.issues / f"{next_month()}.md").is_file()
    assert next_month(_dt.date(2026, 12, 31)) == "2027-01"
    assert next_month(_dt.date(2026, 1, 31)) == "2026-02"


def test_new_with_a_doi_nobody_knows_writes_nothing(run: Run, doi_settings: Settings) -> None:
    result = run("new", "2027-02", "--doi", "10.1037/not-registered")
    assert result.exit_code == 1
    assert "DOI 10.1037/not-registered is not registered" in result.stderr
    assert not (doi_settings.paths.issues / "2027-02.md").exists()
