from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from newsletter.check import GMAIL_CLIP_BYTES, check_issue, check_links
from newsletter.cli import main
from newsletter.settings import Settings

from .conftest import SAMPLE_ISSUES, VALID_ISSUE, WELCOME_SAMPLE


@pytest.mark.parametrize(
    "path", [*SAMPLE_ISSUES, WELCOME_SAMPLE], ids=[p.name for p in [*SAMPLE_ISSUES, WELCOME_SAMPLE]]
)
def test_offline_check_passes_on_every_sample(path: Path, settings: Settings) -> None:
    report = check_issue(path, settings, offline=True)
    assert report.problems == []
    assert 10_000 < report.html_bytes < GMAIL_CLIP_BYTES


def test_check_reports_parse_errors_with_lines(
    settings: Settings, write_issue: Callable[..., Path]
) -> None:
    path = write_issue(VALID_ISSUE.replace("month: 2026-10", "month: 2026-1"))
    report = check_issue(path, settings, offline=True)
    assert not report.ok
    assert [str(p) for p in report.errors] == [
        f"{path}:2: month must be YYYY-MM with a month from 01 to 12, not '2026-1'"
    ]


def test_html_over_gmail_clipping_is_an_error(
    settings: Settings, write_issue: Callable[..., Path]
) -> None:
    long_summary = "\n\n".join(f"Paragraph {n} " + "words " * 400 for n in range(60))
    path = write_issue(
        VALID_ISSUE.replace("Clients whose therapists", long_summary + "\n\nClients whose")
    )
    report = check_issue(path, settings, offline=True)
    assert report.html_bytes > GMAIL_CLIP_BYTES
    assert any("Gmail clips messages over 102 KB" in p.message for p in report.errors)


def test_image_without_alt_text_and_unknown_placeholder(
    settings: Settings, write_issue: Callable[..., Path]
) -> None:
    text = VALID_ISSUE.replace(
        "Notice ruptures and",
        "![](https://example.org/chart.png)\n\nHi [[frist_name]]. Notice ruptures and",
    )
    path = write_issue(text)
    messages = [str(p) for p in check_issue(path, settings, offline=True).errors]
    assert f"{path}:23: image https://example.org/chart.png has no alt text" in messages
    assert any(
        m.startswith(f"{path}:25: placeholder [[frist_name]] is left unreplaced") for m in messages
    )


@pytest.fixture
def link_server() -> Iterator[HTTPServer]:
    # Threaded, so that one slow link does not hold up the others, as on the real web.
    httpserver = HTTPServer(threaded=True)
    httpserver.start()
    try:
        yield from _serve_links(httpserver)
    finally:
        httpserver.clear()
        httpserver.stop()


def _serve_links(httpserver: HTTPServer) -> Iterator[HTTPServer]:
    httpserver.expect_request("/ok", method="HEAD").respond_with_data("")
    httpserver.expect_request("/gone", method="HEAD").respond_with_data("", status=404)
    httpserver.expect_request("/gone", method="GET").respond_with_data("", status=404)
    # A server that refuses HEAD but serves GET must not be reported.
    httpserver.expect_request("/no-head", method="HEAD").respond_with_data("", status=405)
    httpserver.expect_request("/no-head", method="GET").respond_with_data("fine")
    httpserver.expect_request("/moved", method="HEAD").respond_with_data(
        "", status=301, headers={"Location": httpserver.url_for("/ok")}
    )

    def slow(request: Request) -> Response:
        time.sleep(1.5)
        return Response("late")

    httpserver.expect_request("/slow").respond_with_handler(slow)
    yield httpserver


def test_links_are_fetched_and_broken_ones_listed(link_server: HTTPServer) -> None:
    urls = [link_server.url_for(p) for p in ("/ok", "/gone", "/no-head", "/moved", "/slow")]
    broken = dict(check_links(urls, timeout=0.5, concurrency=4))
    assert broken == {
        link_server.url_for("/gone"): "HTTP 404",
        link_server.url_for("/slow"): "no answer within 0.5 s",
    }


def test_unreachable_host_is_reported() -> None:
    broken = check_links(["http://127.0.0.1:9/nothing"], timeout=1)
    assert broken == [("http://127.0.0.1:9/nothing", "cannot connect (ConnectionError)")]


def test_online_check_points_to_the_line_of_a_broken_link(
    link_server: HTTPServer, settings: Settings, write_issue: Callable[..., Path]
) -> None:
    gone = link_server.url_for("/gone")
    text = VALID_ISSUE.replace("DOI: 10.1037/pst0000185", f"URL: {gone}").replace(
        "DOI: https://doi.org/10.1037/pst0000167", f"URL: {link_server.url_for('/ok')}"
    )
    path = write_issue(text)
    report = check_issue(path, settings, timeout=2)
    assert report.links_checked == 2
    assert [str(p) for p in report.errors] == [f"{path}:16: broken link {gone}: HTTP 404"]


def test_no_network_is_said_once_with_the_way_out(
    settings: Settings, write_issue: Callable[..., Path]
) -> None:
    # Nothing listens on these loopback ports (9 is "discard"), as no server answers offline.
    text = VALID_ISSUE.replace("DOI: 10.1037/pst0000185", "URL: http://127.0.0.1:9/first").replace(
        "DOI: https://doi.org/10.1037/pst0000167", "URL: http://127.0.0.1:9/second"
    )
    path = write_issue(text)
    report = check_issue(path, settings, timeout=2)
    assert [str(p) for p in report.problems] == [
        f"{path}: the network is unreachable: no link answered (2 links tried; "
        "http://127.0.0.1:9/first: cannot connect (ConnectionError)); check the connection, "
        "or run `newsletter check --offline` to skip the links"
    ]
    result = CliRunner().invoke(main, ["--config", str(settings.source), "check", str(path)])
    assert result.exit_code == 1
    assert result.stdout.count("the network is unreachable") == 1
    assert "broken link" not in result.output
    assert "Traceback" not in result.output


def test_one_dead_host_among_answering_ones_is_a_broken_link(
    link_server: HTTPServer, settings: Settings, write_issue: Callable[..., Path]
) -> None:
    text = VALID_ISSUE.replace("DOI: 10.1037/pst0000185", "URL: http://127.0.0.1:9/dead").replace(
        "DOI: https://doi.org/10.1037/pst0000167", f"URL: {link_server.url_for('/ok')}"
    )
    path = write_issue(text)
    assert [str(p) for p in check_issue(path, settings, timeout=2).errors] == [
        f"{path}:16: broken link http://127.0.0.1:9/dead: cannot connect (ConnectionError)"
    ]
