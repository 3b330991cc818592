from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag

import pytest
from click.testing import CliRunner

from newsletter.archive import ArchiveResult, build_archive
from newsletter.cli import main
from newsletter.errors import IssueFileError
from newsletter.settings import Settings, load_settings

from .cdp import Browser
from .conftest import REPO, VALID_ISSUE
from .pages import serve_folder

ATOM = "{http://www.w3.org/2005/Atom}"
VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
}


@pytest.fixture
def site(tmp_path: Path) -> ArchiveResult:
    settings = load_settings(REPO / "newsletter.toml")
    settings = replace(settings, paths=replace(settings.paths, build=tmp_path / "build"))
    return build_archive(settings)


class _Page(HTMLParser):
    """Collects links and ids, and checks that elements nest and close properly."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = self.doctype or decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("href", "src"):
            if values.get(name):
                self.links.append(str(values[name]))
        if values.get("id"):
            if values["id"] in self.ids:
                self.errors.append(f"duplicate id {values['id']}")
            self.ids.add(str(values["id"]))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
        else:
            self.stack.pop()


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text("utf-8"))
    page.close()
    return page


def test_archive_has_index_issue_topic_pages_and_feed(site: ArchiveResult) -> None:
    folder = site.folder
    months = sorted(p.parent.name for p in folder.glob("20*/index.html"))
    assert months == ["2026-08", "2026-09", "2026-10"]
    index = (folder / "index.html").read_text("utf-8")
    # Newest first, grouped by year.
    assert index.index("October 2026") < index.index("September 2026") < index.index("August 2026")
    assert '<h2 id="year-2026">2026</h2>' in index
    topic_pages = list((folder / "topics").glob("*/index.html"))
    assert len(topic_pages) == len({t for i in site.issues for t in i.topics})
    alliance = (
        folder / "topics" / "alliance-and-therapeutic-relationship" / "index.html"
    ).read_text("utf-8")
    # Articles from different issues under one topic.
    assert "August 2026" in alliance and "Alliance rupture" in (
        folder / "2026-08" / "index.html"
    ).read_text("utf-8")


def test_every_page_is_well_formed_and_every_relative_link_resolves(site: ArchiveResult) -> None:
    pages = [p for p in site.folder.rglob("*.html")]
    assert len(pages) >= 8
    for path in pages:
        page = _parse(path)
        assert page.doctype, path
        assert page.errors == [] and page.stack == [], (path, page.errors, page.stack)
        for link in page.links:
            if link.startswith(("http://", "https://", "mailto:")):
                continue
            assert not link.startswith("/"), f"{path}: absolute link {link}"
            target, fragment = urldefrag(link)
            resolved = (path.parent / target).resolve() if target else path
            assert resolved.is_file(), f"{path}: {link} leads nowhere"
            if fragment and resolved.suffix == ".html":
                assert fragment in _parse(resolved).ids, f"{path}: {link} has no such anchor"


def test_atom_feed_is_valid(site: ArchiveResult) -> None:
    root = ET.parse(site.folder / "feed.xml").getroot()
    assert root.tag == f"{ATOM}feed"
    for name in ("id", "title", "updated", "author"):
        assert root.find(f"{ATOM}{name}") is not None, name
    assert (
        root.find(f"{ATOM}link[@rel='self']").get("href") == "https://digest.example.org/feed.xml"
    )  # type: ignore[union-attr]
    entries = root.findall(f"{ATOM}entry")
    assert [e.findtext(f"{ATOM}id") for e in entries] == [
        "https://digest.example.org/2026-10/",
        "https://digest.example.org/2026-09/",
        "https://digest.example.org/2026-08/",
    ]
    for entry in entries:
        assert entry.findtext(f"{ATOM}updated", "").endswith("T00:00:00Z")
        content = entry.find(f"{ATOM}content")
        assert content is not None and content.get("type") == "html"
        assert "<ul><li>" in (content.text or "")  # escaped HTML, unescaped by the parser
        assert "[[name]]" not in (content.text or "")


def test_an_issue_with_errors_stops_the_build_unless_skipped(tmp_path: Path) -> None:
    (tmp_path / "issues").mkdir()
    (tmp_path / "issues" / "2026-10.md").write_text(VALID_ISSUE, "utf-8")
    (tmp_path / "issues" / "2026-11.md").write_text(
        VALID_ISSUE.replace("2026-10", "2026-11").replace("Year: 2018", "Year: x", 1), "utf-8"
    )
    settings: Settings = load_settings(None, root=tmp_path)
    (tmp_path / "build" / "site").mkdir(parents=True)
    (tmp_path / "build" / "site" / "index.html").write_text("previous site", "utf-8")
    with pytest.raises(IssueFileError, match=r"2026-11\.md:11: Year must be"):
        build_archive(settings)
    assert (tmp_path / "build" / "site" / "index.html").read_text("utf-8") == "previous site"
    result = build_archive(settings, strict=False)
    assert [i.month for i in result.issues] == ["2026-10"]
    assert len(result.skipped) == 1


def test_archive_command(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["--config", str(REPO / "newsletter.toml"), "archive", "--out", str(tmp_path / "site")],
    )
    assert result.exit_code == 0, result.output
    assert "3 issues" in result.output
    assert (tmp_path / "site" / "feed.xml").is_file()


def test_in_chromium_the_index_leads_to_a_topic_and_its_articles(site: ArchiveResult) -> None:
    with serve_folder(site.folder) as base, Browser(width=375) as browser:
        browser.open(base + "index.html")
        assert browser.evaluate("document.documentElement.scrollWidth") <= 375
        assert "October 2026" in browser.text("main")
        browser.click('a[href="2026-10/index.html"]')
        assert browser.url.endswith("/2026-10/index.html")
        assert "PRACTICE IMPLICATIONS" in browser.text("main").upper()
        assert browser.evaluate("document.documentElement.scrollWidth") <= 375
        browser.click(".topics a")
        assert "/topics/" in browser.url
        topic = browser.text("h1")
        listed = browser.evaluate("[...document.querySelectorAll('.entry-list li')].length")
        assert listed >= 1
        # Following an entry lands on the article inside its issue page.
        browser.click(".entry-list a")
        assert "#" in browser.url
        anchor = browser.url.split("#", 1)[1]
        assert (
            browser.evaluate(
                f"document.getElementById('{anchor}').closest('article').innerText"
            ).count(topic)
            >= 1
        )


def test_no_placeholder_reaches_the_public_archive(tmp_path: Path) -> None:
    (tmp_path / "issues").mkdir()
    text = VALID_ISSUE.replace(
        "Dear [[name]], this month", "Dear [[name]] ([[email]]), this month"
    ).replace(
        "Notice ruptures", "[[name]], see [your settings]([[unsubscribe_url]]). Notice ruptures"
    )
    (tmp_path / "issues" / "2026-10.md").write_text(text, "utf-8")
    result = build_archive(load_settings(None, root=tmp_path))
    for path in result.folder.rglob("*"):
        if path.is_file():
            assert "[[" not in path.read_text("utf-8"), path
    page = (result.folder / "2026-10" / "index.html").read_text("utf-8")
    assert "Dear reader (you), this month" in page
    assert 'href="https://digest.example.org/subscribe"' in page


@pytest.mark.parametrize(
    ("template", "source", "expected"),
    [
        ("site/index.html", "{% for x in %}", r".*/templates/site/index\.html:1: "),
        ("site/topic.html", "{{ no_such_value.attribute }}", r"template site/topic\.html: "),
        ("site/feed.xml", "{% include 'missing.xml' %}", r"template 'missing\.xml' not found"),
    ],
    ids=["syntax", "undefined", "missing-include"],
)
def test_a_broken_site_template_is_an_error_with_its_name_not_a_traceback(
    tmp_path: Path, template: str, source: str, expected: str
) -> None:
    folder = tmp_path / "letter"
    assert CliRunner().invoke(main, ["init", str(folder)]).exit_code == 0
    override = folder / "templates" / template
    override.parent.mkdir(parents=True, exist_ok=True)
    override.write_text(source, "utf-8")
    result = CliRunner().invoke(main, ["--config", str(folder / "newsletter.toml"), "archive"])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert re.search(r"^Error: " + expected, result.output, re.M), result.output
    assert not (folder / "build" / "site").exists()
