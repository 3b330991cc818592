"""``newsletter archive``: the static web archive of past issues.

build/site/
    index.html              every issue, newest first, grouped by year
    2026-10/index.html      one issue: the "view in browser" page
    topics/index.html       every topic used, with its article count
    topics/<slug>/index.html   every article tagged with the topic, across issues
    feed.xml                Atom feed
    style.css

Pages link to each other relatively, so the folder can be hosted anywhere; the feed uses
absolute URLs (``base_url``), as feed readers require.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from newsletter.errors import IssueFileError, NewsletterError, Problem
from newsletter.issue import Article, Issue
from newsletter.parse import read_issue
from newsletter.recipient_fields import NAME_FALLBACK, fill
from newsletter.render import template_environment, template_errors
from newsletter.settings import Settings
from newsletter.taxonomy import slugify
from newsletter.tokens import web_url


@dataclass(frozen=True)
class TopicEntry:
    issue: Issue
    article: Article


@dataclass(frozen=True)
class ArchiveResult:
    folder: Path
    issues: tuple[Issue, ...]
    pages: tuple[Path, ...]
    skipped: tuple[Problem, ...]


def load_issues(settings: Settings, *, strict: bool = True) -> tuple[list[Issue], list[Problem]]:
    """Every issue in the issues folder, newest first. With ``strict``, a broken one is an error."""
    folder = settings.paths.issues
    if not folder.is_dir():
        raise NewsletterError(f"{folder}: the issues folder does not exist")
    issues: list[Issue] = []
    problems: list[Problem] = []
    for path in sorted(folder.glob("*.md")):
        if settings.reads_as_welcome(path):
            continue  # the welcome email is no issue of the archive
        result = read_issue(path, settings.taxonomy)
        errors = [p for p in result.problems if p.severity == "error"]
        if errors or result.issue is None:
            problems.extend(errors)
            continue
        issues.append(result.issue)
    if strict and problems:
        raise IssueFileError(problems)
    issues.sort(key=lambda issue: issue.month, reverse=True)
    return issues, problems


def month_date(month: str) -> _dt.datetime:
    return _dt.datetime.strptime(month, "%Y-%m").replace(tzinfo=_dt.UTC)


def build_archive(
    settings: Settings, *, out: Path | None = None, strict: bool = True
) -> ArchiveResult:
    """Write the whole site into build/site (replacing what an earlier build left there)."""
    issues, skipped = load_issues(settings, strict=strict)
    if not issues:
        raise NewsletterError(f"{settings.paths.issues}: no issues to put in the archive")
    site = out or settings.paths.build / "site"
    # Build next to the target and swap it in, so a failed build never leaves half a site.
    staging = site.with_name(site.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)

    env = template_environment(settings)
    by_topic: dict[str, list[TopicEntry]] = {}
    for issue in issues:
        for article in issue.articles:
            for topic in article.topics:
                by_topic.setdefault(topic, []).append(TopicEntry(issue, article))
    topics = sorted(by_topic, key=str.casefold)
    years: dict[str, list[Issue]] = {}
    for issue in issues:
        years.setdefault(issue.month[:4], []).append(issue)

    public_fields = public_placeholder_values(settings)
    common = {
        "public": lambda text: fill(text, public_fields, html=False),
        "settings": settings,
        "style": settings.style,
        "slugify": slugify,
        "month_date": month_date,
        "subscribe_url": subscribe_url(settings),
    }
    pages: list[Path] = []

    def write(relative: str, template: str, root: str, **context: object) -> None:
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with template_errors(template):
            html = env.get_template(template).render(**common, root=root, **context)
        path.write_text(html, "utf-8")
        pages.append(site / relative)

    write("index.html", "site/index.html", "", years=years, issues=issues, topics=topics)
    for n, issue in enumerate(issues):
        newer = issues[n - 1] if n > 0 else None
        older = issues[n + 1] if n + 1 < len(issues) else None
        write(
            f"{issue.month}/index.html",
            "site/issue.html",
            "../",
            issue=issue,
            newer=newer,
            older=older,
        )
    write("topics/index.html", "site/topics.html", "../", topics=topics, by_topic=by_topic)
    for topic in topics:
        entries = by_topic[topic]
        write(
            f"topics/{slugify(topic)}/index.html",
            "site/topic.html",
            "../../",
            topic=topic,
            entries=entries,
        )
    with template_errors("site/feed.xml"):
        feed = env.get_template("site/feed.xml").render(
            **common,
            issues=issues[:20],
            updated=month_date(issues[0].month).isoformat().replace("+00:00", "Z"),
            feed_url=f"{settings.base_url}/feed.xml",
        )
    (staging / "feed.xml").write_text(feed, "utf-8")
    pages.append(site / "feed.xml")
    css = resources.files("newsletter").joinpath("templates/site/style.css").read_text("utf-8")
    with template_errors("site/style.css"):
        stylesheet = env.from_string(css).render(style=settings.style)
    (staging / "style.css").write_text(stylesheet, "utf-8")

    if site.exists():
        shutil.rmtree(site)
    staging.rename(site)
    return ArchiveResult(site, tuple(issues), tuple(pages), tuple(skipped))


def subscribe_url(settings: Settings) -> str:
    return f"{web_url(settings)}/subscribe"


def public_placeholder_values(settings: Settings) -> dict[str, str]:
    """What the per-recipient fields become on the public web: nobody in particular."""
    return {"name": NAME_FALLBACK, "email": "you", "unsubscribe_url": subscribe_url(settings)}
