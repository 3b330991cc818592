"""``newsletter check``: everything that can be wrong with an issue before it is sent.

The file's own problems come from the parser; this adds what only the rendered email shows:
its size against Gmail's clipping, images without alt text, empty sections, placeholders
left unfilled, and (online) links that do not answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import requests

from newsletter import __version__
from newsletter.english import counted
from newsletter.errors import Problem
from newsletter.parse import read_issue
from newsletter.recipient_fields import fill, known_fields
from newsletter.render import RenderedIssue, render_issue, sample_fields
from newsletter.settings import Settings

# Gmail cuts a message's HTML after about 102 KB and hides the rest behind "View entire
# message", which also hides the unsubscribe link.
GMAIL_CLIP_BYTES = 102 * 1024
WARN_BYTES = 90 * 1024
LEFTOVER = re.compile(r"\[\[[^\]\n]{1,40}\]\]|\{\{.*?\}\}|\{%.*?%\}")


@dataclass
class CheckReport:
    path: Path
    problems: list[Problem] = field(default_factory=list)
    html_bytes: int = 0
    links_checked: int = 0
    # The issue as checked, rendered once: a send goes on with this very render.
    rendered: RenderedIssue | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


def check_issue(
    path: Path,
    settings: Settings,
    *,
    offline: bool = False,
    timeout: float = 10.0,
    concurrency: int = 8,
    session: requests.Session | None = None,
    welcome: bool | None = None,
) -> CheckReport:
    """Every problem of the issue file at ``path`` and of the email it makes, with its render.

    ``welcome``: read it as the welcome email; by default when it is the settings' welcome
    file (``settings.reads_as_welcome``).
    """
    report = CheckReport(path)
    if welcome is None:
        welcome = settings.reads_as_welcome(path)
    result = read_issue(path, settings.taxonomy, welcome=welcome)
    report.problems.extend(result.problems)
    if result.issue is None:
        return report
    rendered = report.rendered = render_issue(result.issue, settings)
    source = _SourceLines(path)
    report.problems.extend(check_rendered(rendered, settings, report, source))
    if not offline:
        links = sorted(_own_links(rendered.html, settings))
        report.links_checked = len(links)
        failures = check_links(links, timeout=timeout, concurrency=concurrency, session=session)
        report.problems.extend(link_problems(path, links, failures, source))
    report.problems.sort()
    return report


def check_rendered(
    rendered: RenderedIssue,
    settings: Settings,
    report: CheckReport,
    source: _SourceLines | None = None,
) -> list[Problem]:
    path = str(rendered.issue.path)
    source = source or _SourceLines(rendered.issue.path)
    problems: list[Problem] = []
    fields = sample_fields(settings)
    html = fill(rendered.html, fields, html=True)
    text = fill(rendered.text, fields, html=False)
    size = len(html.encode("utf-8"))
    report.html_bytes = size
    if size > GMAIL_CLIP_BYTES:
        problems.append(
            Problem(
                path,
                0,
                f"the HTML is {size / 1024:.1f} KB; Gmail clips messages over "
                f"{GMAIL_CLIP_BYTES // 1024} KB, hiding the rest and the unsubscribe link: shorten the issue",
            )
        )
    elif size > WARN_BYTES:
        problems.append(
            Problem(
                path,
                0,
                f"the HTML is {size / 1024:.1f} KB, close to Gmail's "
                f"{GMAIL_CLIP_BYTES // 1024} KB clipping limit",
                "warning",
            )
        )

    page = _Page()
    page.feed(html)
    for src in page.images_without_alt:
        problems.append(Problem(path, source.line_of(src), f"image {src} has no alt text"))
    if page.empty_paragraphs:
        problems.append(
            Problem(
                path,
                0,
                f"{counted(page.empty_paragraphs, 'empty paragraph')} in the email",
                "warning",
            )
        )
    for part, content in (("HTML", html), ("text", text)):
        for leftover in sorted(set(LEFTOVER.findall(content))):
            problems.append(
                Problem(
                    path,
                    source.line_of(leftover),
                    f"placeholder {leftover} is left unreplaced in the {part} part; "
                    f"known fields are {known_fields()}",
                )
            )
    return problems


# The reasons check_links gives when no server answered at all (no HTTP status).
_NO_ANSWER = ("cannot connect", "no answer within")


def link_problems(
    path: Path,
    links: list[str],
    failures: list[tuple[str, str]],
    source: _SourceLines | None = None,
) -> list[Problem]:
    """One problem per broken link; or, when not one link answered, a single one saying the
    network is unreachable: a laptop on a train should not be told every DOI is broken."""
    unanswered = [url for url, reason in failures if reason.startswith(_NO_ANSWER)]
    if links and len(unanswered) == len(links):
        return [
            Problem(
                str(path),
                0,
                f"the network is unreachable: no link answered ({counted(len(links), 'link')} "
                f"tried; {failures[0][0]}: {failures[0][1]}); check the connection, or run "
                "`newsletter check --offline` to skip the links",
            )
        ]
    source = source or _SourceLines(path)
    return [
        Problem(str(path), source.line_of(url), f"broken link {url}: {reason}")
        for url, reason in failures
    ]


def check_links(
    urls: Iterable[str],
    *,
    timeout: float = 10.0,
    concurrency: int = 8,
    session: requests.Session | None = None,
) -> list[tuple[str, str]]:
    """Fetch each URL; return (url, reason) for the ones that fail."""
    own = session or requests.Session()
    own.headers.setdefault("User-Agent", f"newsletter-link-check/{__version__}")
    # Some servers refuse bots a HEAD or answer it wrongly; a GET confirms before we blame them.
    retry_with_get = {403, 405, 429, 501}

    def probe(url: str) -> tuple[str, str | None]:
        try:
            response = own.head(url, allow_redirects=True, timeout=timeout)
            if response.status_code in retry_with_get or response.status_code >= 400:
                response = own.get(url, allow_redirects=True, timeout=timeout, stream=True)
                response.close()
            if response.status_code >= 400:
                return url, f"HTTP {response.status_code}"
            return url, None
        except requests.Timeout:
            return url, f"no answer within {timeout:g} s"
        except requests.TooManyRedirects:
            return url, "too many redirects"
        except requests.RequestException as exc:
            return url, f"cannot connect ({type(exc).__name__})"

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        results = list(pool.map(probe, list(urls)))
    if session is None:
        own.close()
    return [(url, reason) for url, reason in results if reason is not None]


def _own_links(html: str, settings: Settings) -> set[str]:
    """External http(s) links; the newsletter's own archive pages go live with the issue."""
    page = _Page()
    page.feed(html)
    return {
        url
        for url in page.links
        if url.startswith(("http://", "https://"))
        and not url.startswith(settings.base_url + "/")
        and "[[" not in url
    }


class _SourceLines:
    """The issue file's lines, read once, to say on which line a finding's text stands."""

    def __init__(self, path: Path):
        try:
            self.lines = path.read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            self.lines = []

    def line_of(self, needle: str) -> int:
        for number, line in enumerate(self.lines, 1):
            if needle in line:
                return number
        if needle.startswith("https://doi.org/"):
            return self.line_of(needle.removeprefix("https://doi.org/"))
        return 0


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.images_without_alt: list[str] = []
        self.empty_paragraphs = 0
        self._in_p = False
        self._p_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            self.links.append(str(values["href"]))
        elif tag == "img" and not (values.get("alt") or "").strip():
            self.images_without_alt.append(str(values.get("src") or "(no src)"))
        elif tag == "p" and "border-top" not in (values.get("style") or ""):
            # (MJML draws dividers as empty paragraphs with a top border.)
            self._in_p, self._p_text = True, []
        elif tag in ("img", "br") and self._in_p:
            self._p_text.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "p" and self._in_p:
            if not "".join(self._p_text).strip():
                self.empty_paragraphs += 1
            self._in_p = False

    def handle_data(self, data: str) -> None:
        if self._in_p:
            self._p_text.append(data)
