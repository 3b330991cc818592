"""`newsletter cite`, `newsletter new` and `check --citations` against a loopback Crossref."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterator
from pathlib import Path

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


CITED_ISSUE = """\
---
month: 2026-10
title: October 2026
subject: Transference, feedback and a retraction
---
Dear [[name]], this month I write about what the records say.

# Transference work helps some clients
Authors: Høglend, P.; Bøgwald, K.-P.; Amlo, S.
Year: 2008
Title: Transference interpretations in dynamic psychotherapy: Do they really yield sustained effects?
Journal: American Journal of Psychiatry
Volume: 165(6)
Pages: 763–771
DOI: 10.1176/appi.ajp.2008.07061028
Topics: Transference and Countertransference

It matched the record, apart from the title's capitals.

## Practice Implications
Assess relationships early.

# Feedback effects depend on the therapist
Authors: Jong, K. de; van Sluis, P.
Year: 2011
Title: Understanding the differential impact of outcome monitoring
Journal: Psychotherapy Research
DOI: 10.1080/10503307.2012.673023
Topics: Feedback and Progress Monitoring

Year and first author are wrong here; the title lacks its subtitle.

## Practice Implications
Look at the feedback.

# A retracted classic
Authors: Wakefield, A. J.; Murch, S. H.
Year: 1998
Title: Ileal-lymphoid-nodular hyperplasia, non-specific colitis, and pervasive developmental disorder in children
Journal: Lancet
Volume: 351(9103)
Pages: 637–641
DOI: 10.1016/S0140-6736(97)11096-0
Topics: Miscellaneous

Retracted in 2010.

## Practice Implications
Check retractions.

# A DOI with a typo
Authors: Lambert, M. J.
Year: 2018
Title: Progress feedback
Journal: Psychotherapy
DOI: 10.1037/not-registered
Topics: Feedback and Progress Monitoring

No record.

## Practice Implications
Copy DOIs with care.
"""


def test_citations_are_compared_with_their_records(doi_settings: Settings, tmp_path: Path) -> None:
    from newsletter.citation_check import check_citations

    path = tmp_path / "issues" / "2026-10.md"
    path.parent.mkdir()
    path.write_text(CITED_ISSUE, "utf-8")
    report = check_citations(path, doi_settings)
    assert report.checked == 3
    assert [str(p).replace(str(path), "PATH") for p in sorted(report.problems)] == [
        "PATH:24: warning: the first author 'Jong' differs from the DOI's record (Crossref): "
        "'de Jong, K.'",
        "PATH:25: warning: Year 2011 differs from the DOI's record (Crossref): 2012",
        "PATH:26: warning: Title differs from the DOI's record (Crossref): 'Understanding "
        "the differential impact of outcome monitoring: Therapist variables that moderate "
        "feedback effects in a randomized clinical trial'",
        "PATH:43: 10.1016/S0140-6736(97)11096-0 was retracted (notice "
        "10.1016/S0140-6736(10)60175-4, 2010-02-06; recorded by Publisher, Retraction Watch); "
        "remove the article, or write about the retraction and cite the notice",
        "PATH:56: DOI 10.1037/not-registered does not resolve: neither Crossref nor doi.org "
        "knows it; copy the DOI again from the article's page",
    ]


def _write_cited_issue(tmp_path: Path) -> Path:
    path = tmp_path / "issues" / "2026-10.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text(CITED_ISSUE, "utf-8")
    return path


def test_a_recheck_reads_the_cache_and_works_offline(
    run: Run, doi_settings: Settings, registries: Registries, tmp_path: Path
) -> None:
    from newsletter.citation_check import check_citations

    path = _write_cited_issue(tmp_path)
    online = check_citations(path, doi_settings)
    asked = len(registries.requests)
    result = run("check", "--offline", "--citations", str(path))
    assert len(registries.requests) == asked  # nothing asked: the records were on disk
    assert result.exit_code == 1
    printed = result.stdout.splitlines()
    for problem in online.problems:
        if "does not resolve" not in problem.message:
            assert str(problem) in printed
    # The unknown DOI was never cached: offline, it is said to be unchecked, not wrong.
    assert f"{path}:56: warning: 10.1037/not-registered is not in the DOI cache" in result.stdout
    assert result.stderr.startswith(f"Error: {path}: 1 error, ")
    assert "3 citations compared with DOI records" in result.stderr


def test_citations_with_crossref_down_say_so_once(
    doi_settings: Settings, registries: Registries, tmp_path: Path
) -> None:
    from newsletter.citation_check import check_citations

    path = _write_cited_issue(tmp_path)
    for doi in ("10.1176/appi.ajp.2008.07061028",):
        registries.queued[doi] = [lambda: Response("down", status=502)] * 3
    from newsletter.doi import DoiClient

    with DoiClient(doi_settings, sleep=lambda seconds: None) as client:
        report = check_citations(path, doi_settings, client=client)
    assert len(report.problems) == 1
    assert report.problems[0].message.startswith("citations not checked: Crossref (")
    assert "failed with HTTP 502 for 10.1176/appi.ajp.2008.07061028 after 3 tries" in str(
        report.problems[0]
    )


def test_new_with_a_wrong_month_asks_nothing(run: Run, registries: Registries) -> None:
    result = run("new", "2027-13", "--doi", "10.1176/appi.ajp.2008.07061028")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: month must be YYYY-MM with a month from 01 to 12, not '2027-13'\n"
    )
    assert registries.requests == []


def test_cite_without_a_network_says_so_once(tmp_path: Path) -> None:
    from .conftest import write_settings

    settings = write_settings(
        tmp_path, '[crossref]\nbase_url = "http://127.0.0.1:9"\ntimeout = 1\n'
    )
    result = CliRunner().invoke(
        main, ["--config", str(settings.source), "cite", "10.1037/a", "10.1037/b"]
    )
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: cannot reach Crossref (127.0.0.1:9) for 10.1037/a: the network is unreachable "
        "(ConnectionError); check the connection\n"
    )
