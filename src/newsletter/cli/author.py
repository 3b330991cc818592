"""The author's commands: init, new, cite, check, preview, templates, archive."""

from __future__ import annotations

import webbrowser
from pathlib import Path

import click

from newsletter import browser, scaffold
from newsletter.check import check_issue
from newsletter.cli import AppContext, pass_app
from newsletter.english import counted
from newsletter.errors import CheckFailed, NewsletterError
from newsletter.parse import bare_doi
from newsletter.preview import LivePreview, build_preview, take_screenshots

issue_argument = click.argument(
    "issue", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)


@click.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default=".")
def init(folder: Path) -> None:
    """Create a new newsletter in FOLDER (default: here).

    Writes newsletter.toml, an example issue, templates/ ready to override, an example
    subscriber CSV and a local signing key, then `newsletter preview` works at once.
    """
    created = scaffold.init_newsletter(folder)
    for path in created:
        click.echo(f"created {path}")
    issue = next((p for p in created if p.parent.name == "issues"), None)
    click.echo(
        f"\nNext: cd {folder} && newsletter preview {issue.relative_to(folder) if issue else 'issues/…'}"
    )


@click.command()
@issue_argument
@click.option("--offline", is_flag=True, help="Skip fetching the links.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for each link.")
@click.option("--concurrency", default=8, show_default=True, help="Links fetched at once.")
@click.option(
    "--citations",
    is_flag=True,
    help="Compare each citation with its DOI's record (Crossref); flag retractions.",
)
@pass_app
def check(
    app: AppContext,
    issue: Path,
    offline: bool,
    timeout: float,
    concurrency: int,
    citations: bool,
) -> None:
    """Validate ISSUE and the email it makes; exit non-zero on errors.

    Checks the file (front matter, citations, topics, sections), the rendered email (size
    against Gmail's clipping, image alt text, unreplaced placeholders) and, unless
    --offline, that every link answers. --citations also compares each citation with its
    DOI's record (from the cache only when --offline).
    """
    report = check_issue(
        issue, app.settings, offline=offline, timeout=timeout, concurrency=concurrency
    )
    compared = None
    if citations:
        from newsletter.citation_check import check_citations

        compared = check_citations(issue, app.settings, offline=offline)
        report.problems = sorted([*report.problems, *compared.problems])
    # One stream, in file order, so that `check > log` keeps every problem in its place.
    for problem in report.problems:
        click.echo(str(problem))
    summary = f"{counted(len(report.errors), 'error')}, {counted(len(report.warnings), 'warning')}"
    if report.html_bytes:
        summary += f"; HTML {report.html_bytes / 1024:.1f} KB"
    if not offline:
        summary += f"; {counted(report.links_checked, 'link')} checked"
    if compared is not None:
        summary += f"; {counted(compared.checked, 'citation')} compared with DOI records"
    if not report.ok:
        raise CheckFailed(f"{issue}: {summary}")
    click.echo(f"{issue}: OK ({summary})")


@click.command()
@issue_argument
@click.option("--open", "open_browser", is_flag=True, help="Open the preview in a browser.")
@click.option("--serve", is_flag=True, help="Serve on localhost; rebuild and reload on changes.")
@click.option("--port", default=8000, show_default=True, help="Port for --serve.")
@click.option(
    "--screenshot",
    is_flag=True,
    help="Save full-height PNGs at 375 px and 700 px, light and dark (headless Chromium).",
)
@pass_app
def preview(
    app: AppContext, issue: Path, open_browser: bool, serve: bool, port: int, screenshot: bool
) -> None:
    """Write build/<month>/email.html and email.txt for ISSUE, as a sample subscriber sees them."""
    settings = app.settings
    built = build_preview(issue, settings)
    click.echo(f"HTML: {built.html_path}")
    click.echo(f"Text: {built.text_path}")
    if screenshot:
        if browser.find_chromium() is None:
            raise NewsletterError(f"--screenshot needs headless Chromium; {browser.INSTALL_HINT}")
        for shot in take_screenshots(built):
            click.echo(f"Screenshot: {shot}")
    if serve:
        live = LivePreview(issue, settings, port=port)
        click.echo(
            f"Serving {live.url} (rebuilds when the issue or a template changes; Ctrl-C stops)"
        )
        if open_browser:
            webbrowser.open(live.url)
        try:
            live.serve_forever()
        except KeyboardInterrupt:
            click.echo("Stopped.")
    elif open_browser:
        webbrowser.open(built.html_path.resolve().as_uri())


@click.command()
@click.option(
    "--copy", "name", metavar="NAME", help="Copy the packaged template NAME into templates/."
)
@pass_app
def templates(app: AppContext, name: str | None) -> None:
    """List the packaged templates, or copy one into templates/ to override it."""
    if name:
        target = scaffold.copy_template(name, app.settings.paths.templates)
        click.echo(f"copied {name} to {target}")
        return
    folder = app.settings.paths.templates
    for template in scaffold.packaged_templates():
        overridden = (folder / template).is_file()
        click.echo(f"{template}{'  (overridden in ' + str(folder) + ')' if overridden else ''}")


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write (default: build/site).",
)
@click.option(
    "--skip-broken", is_flag=True, help="Leave out issues with errors instead of stopping."
)
@pass_app
def archive(app: AppContext, out: Path | None, skip_broken: bool) -> None:
    """Build the web archive: issues by month, articles by topic, an Atom feed.

    Links between pages are relative, so the folder can be hosted from anywhere; each issue's
    page is the target of the email's "view in browser" link.
    """
    from newsletter.archive import build_archive

    result = build_archive(app.settings, out=out, strict=not skip_broken)
    for problem in result.skipped:
        click.echo(f"skipped: {problem}", err=True)
    click.echo(
        f"{counted(len(result.issues), 'issue')}, {counted(len(result.pages), 'page')} "
        f"in {result.folder}"
    )
    click.echo(f"Open {result.folder / 'index.html'}")


@click.command()
@click.argument("dois", nargs=-1, required=True, metavar="DOI...")
@pass_app
def cite(app: AppContext, dois: tuple[str, ...]) -> None:
    """Print the citation lines of each DOI, ready to paste under an article's heading.

    Asks Crossref (and doi.org for DOIs registered elsewhere, e.g. DataCite); records are
    cached under build/cache/doi/.
    """
    from newsletter.doi import DoiClient
    from newsletter.errors import DoiLookupError, DoiNotFound

    failed: list[str] = []
    with DoiClient(app.settings) as client:
        printed = 0
        for doi in dois:
            try:
                record = client.lookup(bare_doi(doi))
            except DoiNotFound as exc:
                failed.append(str(exc))
                continue
            except DoiLookupError as exc:
                # Network, rate limit or server trouble: the next DOI would fare no better.
                failed.append(str(exc))
                break
            if printed:
                click.echo()
            printed += 1
            click.echo("\n".join(record.citation_lines()))
            for retraction in record.retractions:
                click.echo(f"# RETRACTED ({retraction.describe()})", err=True)
    if failed:
        raise NewsletterError("\n".join(failed))


@click.command()
@click.argument("month", required=False, metavar="[YYYY-MM]")
@click.option(
    "--doi", "dois", multiple=True, metavar="DOI", help="An article to start from (repeatable)."
)
@pass_app
def new(app: AppContext, month: str | None, dois: tuple[str, ...]) -> None:
    """Start the issue file of MONTH (default: next month) in the issues folder.

    Writes the front matter, a teaser to write and one article skeleton per --doi with its
    citation lines filled in from the DOI's record (one empty skeleton without --doi).
    """
    from newsletter import draft
    from newsletter.doi import DoiClient

    month = month or draft.next_month()
    draft.new_issue_path(app.settings.paths.issues, month)  # a wrong month fails before lookups
    records = []
    if dois:
        with DoiClient(app.settings) as client:
            records = [client.lookup(bare_doi(doi)) for doi in dois]
    path = draft.create_issue(app.settings.paths.issues, month, records)
    click.echo(f"created {path}")
    click.echo(
        f"Next: write the headline, topics, summary and Practice Implications; then "
        f"newsletter check {path}"
    )


COMMANDS: list[click.Command] = [init, new, cite, check, preview, templates, archive]
