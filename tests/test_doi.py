"""DOI records from a loopback Crossref and doi.org: formatting, fallback, cache, failures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from werkzeug import Response

from newsletter.doi import DoiClient
from newsletter.errors import DoiLookupError, DoiNotFound
from newsletter.settings import Settings

from .crossref_server import Registries, doi_settings, registries

__all__ = ["doi_settings", "registries"]


def lookup(settings: Settings, doi: str, **options: object) -> list[str]:
    with DoiClient(settings, **options) as client:  # type: ignore[arg-type]
        return client.lookup(doi).citation_lines()


def test_non_ascii_names_hyphenated_initials_and_an_en_dash(doi_settings: Settings) -> None:
    assert lookup(doi_settings, "10.1176/appi.ajp.2008.07061028") == [
        "Authors: Høglend, P.; Bøgwald, K.-P.; Amlo, S.; Marble, A.; Ulberg, R.; "
        "Sjaastad, M. C.; Sørbye, Ø.; Heyerdahl, O.; Johansson, P.",
        "Year: 2008",
        "Title: Transference Interpretations in Dynamic Psychotherapy: Do They Really Yield "
        "Sustained Effects?",
        "Journal: American Journal of Psychiatry",
        "Volume: 165(6)",
        "Pages: 763–771",
        "DOI: 10.1176/appi.ajp.2008.07061028",
    ]


def test_particles_stay_with_the_surname_and_the_subtitle_joins_the_title(
    doi_settings: Settings,
) -> None:
    lines = lookup(doi_settings, "10.1080/10503307.2012.673023")
    assert lines[0] == (
        "Authors: de Jong, K.; van Sluis, P.; Nugter, M. A.; Heiser, W. J.; Spinhoven, P."
    )
    assert lines[2] == (
        "Title: Understanding the differential impact of outcome monitoring: Therapist "
        "variables that moderate feedback effects in a randomized clinical trial"
    )
    assert "Pages: 464–474" in lines


def test_an_online_first_article_says_so_instead_of_a_volume(
    doi_settings: Settings, registries: Registries
) -> None:
    lines = lookup(doi_settings, "10.1016/S2215-0366(18)30162-7")
    assert lines[-2:] == ["Online first: yes", "DOI: 10.1016/S2215-0366(18)30162-7"]
    assert not any(line.startswith(("Volume:", "Pages:")) for line in lines)
    assert "O'Hayon, H.; Patel, U." in lines[0] and "de Jong, K.;" in lines[0]
    # The polite pool: the contact goes in the query and in the User-Agent.
    asked = registries.requests[-1]
    assert asked.args["mailto"] == "editor@example.org"
    assert "mailto:editor@example.org" in asked.headers["User-Agent"]


def test_a_book_chapter_names_its_book_and_pages(doi_settings: Settings) -> None:
    assert lookup(doi_settings, "10.5555/bergin-garfield-7.ch4") == [
        "Authors: Lutz, W.; de Jong, K.; Rubel, J. A.; Delgadillo, J.",
        "Year: 2021",
        "Title: Measuring, predicting, and tracking change in psychotherapy",
        "Journal: Bergin and Garfield's Handbook of Psychotherapy and Behavior Change",
        "Pages: 89–133",
        "DOI: 10.5555/bergin-garfield-7.ch4",
    ]


def test_a_retracted_article_carries_its_retraction(doi_settings: Settings) -> None:
    with DoiClient(doi_settings) as client:
        record = client.lookup("10.1016/S0140-6736(97)11096-0")
        notice = client.lookup("10.1016/S0140-6736(10)60175-4")
    assert record.authors[:2] == ("Wakefield, A. J.", "Murch, S. H.")
    assert [r.describe() for r in record.retractions] == [
        "notice 10.1016/S0140-6736(10)60175-4, 2010-02-06, source: Publisher",
        "notice 10.1016/S0140-6736(10)60175-4, 2010-02-06, source: Retraction Watch",
    ]
    assert [u.notice for u in notice.notice_for] == ["10.1016/S0140-6736(97)11096-0"]
    assert notice.authors == ("The Editors of The Lancet",)


def test_a_datacite_doi_comes_from_doi_org(doi_settings: Settings, registries: Registries) -> None:
    assert lookup(doi_settings, "10.5555/datacite.example") == [
        "Authors: van der Berg, M.; Çelik, A.",
        "Year: 2023",
        "Title: Session-by-session outcome data from a practice research network",
        "Journal: Zenodo",
        "DOI: 10.5555/datacite.example",
    ]
    assert registries.dois_asked == [
        "/works/10.5555/datacite.example",
        "/doi/10.5555/datacite.example",
    ]


def test_a_doi_nobody_knows_is_not_found(doi_settings: Settings) -> None:
    with pytest.raises(DoiNotFound) as caught:
        lookup(doi_settings, "10.1037/not-registered")
    assert str(caught.value) == (
        "DOI 10.1037/not-registered is not registered: neither Crossref nor doi.org knows it; "
        "check it against the article (https://doi.org/10.1037/not-registered)"
    )


def test_records_are_cached_on_disk_and_read_offline(
    doi_settings: Settings, registries: Registries, tmp_path: Path
) -> None:
    first = lookup(doi_settings, "10.1176/appi.ajp.2008.07061028")
    asked = len(registries.requests)
    assert lookup(doi_settings, "10.1176/appi.ajp.2008.07061028") == first
    assert lookup(doi_settings, "10.1176/appi.ajp.2008.07061028", offline=True) == first
    assert len(registries.requests) == asked  # neither asked the server
    cached = list((tmp_path / "build" / "cache" / "doi").glob("*.json"))
    assert len(cached) == 1
    # A stale record is fetched again (retractions come later); offline, it still serves.
    lookup(doi_settings, "10.1176/appi.ajp.2008.07061028", max_age=0)
    assert len(registries.requests) == asked + 1
    with pytest.raises(DoiLookupError, match="is not in the DOI cache"):
        lookup(doi_settings, "10.1080/10503307.2012.673023", offline=True)


def test_429_waits_as_asked_then_succeeds(doi_settings: Settings, registries: Registries) -> None:
    doi = "10.1176/appi.ajp.2008.07061028"
    registries.queued[doi] = [
        lambda: Response("slow down", status=429, headers={"Retry-After": "1"})
    ]
    waits: list[float] = []
    with DoiClient(doi_settings, sleep=waits.append) as client:
        assert client.lookup(doi).year == 2008
    assert waits == [1.0]


def test_429_with_a_long_wait_says_when_to_come_back(
    doi_settings: Settings, registries: Registries
) -> None:
    doi = "10.1176/appi.ajp.2008.07061028"
    registries.queued[doi] = [lambda: Response("", status=429, headers={"Retry-After": "3600"})]
    with pytest.raises(DoiLookupError) as caught:
        lookup(doi_settings, doi, sleep=lambda s: None)
    assert str(caught.value) == (
        "Crossref is limiting requests (HTTP 429) and asks to wait 3600 s before asking for "
        f"{doi} again; try again later"
    )


def test_5xx_is_retried_then_reported(doi_settings: Settings, registries: Registries) -> None:
    doi = "10.1176/appi.ajp.2008.07061028"
    registries.queued[doi] = [lambda: Response("down", status=503)] * 3
    waits: list[float] = []
    with pytest.raises(DoiLookupError) as caught:
        lookup(doi_settings, doi, sleep=waits.append)
    host = registries.server.url_for("/").split("//")[1].rstrip("/")
    assert str(caught.value) == (
        f"Crossref ({host}) failed with HTTP 503 for {doi} after 3 tries; its service is "
        "having trouble: try again later"
    )
    assert waits == [1.0, 2.0]


def test_a_server_that_does_not_answer_in_time(
    doi_settings: Settings, registries: Registries
) -> None:
    doi = "10.1176/appi.ajp.2008.07061028"

    def late() -> Response:
        time.sleep(1.5)
        return Response("{}", content_type="application/json")

    registries.queued[doi] = [late]
    with pytest.raises(DoiLookupError, match=r"did not answer within 1 s for 10\.1176"):
        lookup(doi_settings, doi)


def test_no_network_says_so(tmp_path: Path) -> None:
    from .conftest import write_settings

    settings = write_settings(
        tmp_path, '[crossref]\nbase_url = "http://127.0.0.1:9"\ntimeout = 1\n'
    )
    with pytest.raises(DoiLookupError) as caught:
        lookup(settings, "10.1176/appi.ajp.2008.07061028")
    assert str(caught.value).startswith(
        "cannot reach Crossref (127.0.0.1:9) for 10.1176/appi.ajp.2008.07061028: the network "
        "is unreachable (ConnectionError); check the connection"
    )


def test_names_as_registries_deposit_them() -> None:
    from newsletter.doi import from_crossref

    people = [
        {"given": "PER", "family": "HØGLEND"},
        {"given": "Martin Luther", "family": "King", "suffix": "Jr."},
        {"name": "Open Science Collaboration"},
        {"given": "Kim de", "family": "Jong"},
        {"given": "Al", "family": "Smith"},
    ] + [{"given": f"A{n}", "family": f"Author{n}"} for n in range(20)]
    record = from_crossref({"DOI": "10.5555/x", "author": people, "type": "journal-article"})
    assert record.authors[:5] == (
        "Høglend, P.",
        "King, M. L., Jr.",
        "Open Science Collaboration",
        "de Jong, K.",
        "Smith, A.",
    )
    # APA 7: past 20 authors, the first 19, an ellipsis and the last.
    assert len(record.authors) == 21
    assert record.authors[-2:] == ("…", "Author19, A.")
    assert record.year is None and record.online_first
