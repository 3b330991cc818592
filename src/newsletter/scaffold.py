"""``newsletter init``: a new newsletter folder that previews at once."""

from __future__ import annotations

import datetime as _dt
import secrets
from importlib import resources
from pathlib import Path

from newsletter import store
from newsletter.errors import NewsletterError
from newsletter.private_files import write_private
from newsletter.settings import SETTINGS_FILE

SECRET_FILE = ".newsletter-secret"

_TEMPLATES_README = """\
# templates/

Files here override the packaged templates of the same name, one by one. Copy only the
partial you want to change; the others keep coming from the package, so you get their fixes.

Email (MJML + Jinja2): email.mjml, _styles.mjml, _header.mjml, _article.mjml, _footer.mjml
Plain-text part (Jinja2): email.txt

Run `newsletter templates` to list every packaged template, and
`newsletter templates --copy NAME` to copy one here as a starting point.
"""

_GITIGNORE = f"""\
build/
newsletter.db
newsletter.db-*
newsletter.db.send-*.lock
{SECRET_FILE}
"""


def _data(name: str) -> str:
    return resources.files("newsletter").joinpath(f"data/{name}").read_text("utf-8")


def init_newsletter(folder: Path, *, today: _dt.date | None = None) -> list[Path]:
    """Create the files of a new newsletter in ``folder``; refuse to overwrite one."""
    folder.mkdir(parents=True, exist_ok=True)
    settings_path = folder / SETTINGS_FILE
    if settings_path.exists():
        raise NewsletterError(
            f"{settings_path} already exists; `newsletter init` only creates new newsletters"
        )
    month = (today or _dt.date.today()).strftime("%Y-%m")
    issue_text = _data("example-issue.md")
    example_month = issue_text.split("month:", 1)[1].split("\n", 1)[0].strip()
    title = _dt.datetime.strptime(month, "%Y-%m").strftime("%B %Y")
    issue_text = issue_text.replace(f"month: {example_month}", f"month: {month}", 1)
    issue_text = _replace_line(issue_text, "title:", f"title: {title}")

    files = {
        settings_path: _data("newsletter.toml"),
        folder / "issues" / f"{month}.md": issue_text,
        folder / "templates" / "README.md": _TEMPLATES_README,
        folder / "subscribers.example.csv": _data("subscribers.example.csv"),
        folder / ".gitignore": _GITIGNORE,
        # A random signing key for unsubscribe links, kept out of version control.
        folder / SECRET_FILE: secrets.token_urlsafe(32) + "\n",
    }
    created: list[Path] = []
    for path, text in files.items():
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name == SECRET_FILE:
            write_private(path, text.encode())
        else:
            path.write_text(text, "utf-8")
        created.append(path)
    # An empty list, so that `newsletter serve` can start before the first import.
    database = folder / "newsletter.db"
    if not database.exists():
        store.open_store(database).close()
        created.append(database)
    return created


def _replace_line(text: str, prefix: str, replacement: str) -> str:
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith(prefix):
            lines[i] = replacement
            break
    return "\n".join(lines)


def packaged_templates() -> list[str]:
    """Template names as Jinja knows them, e.g. ``_footer.mjml`` or ``site/issue.html``."""
    root = resources.files("newsletter").joinpath("templates")
    names: list[str] = []
    for entry in root.iterdir():
        if entry.is_file():
            names.append(entry.name)
        elif entry.is_dir() and not entry.name.startswith("__"):
            names.extend(f"{entry.name}/{sub.name}" for sub in entry.iterdir() if sub.is_file())
    return sorted(names)


def copy_template(name: str, templates_dir: Path) -> Path:
    if name not in packaged_templates():
        known = ", ".join(packaged_templates())
        raise NewsletterError(f"no packaged template {name!r}; there are: {known}")
    target = templates_dir / name
    if target.exists():
        raise NewsletterError(f"{target} already exists; remove it first to start from the default")
    target.parent.mkdir(parents=True, exist_ok=True)
    source = resources.files("newsletter").joinpath(f"templates/{name}").read_text("utf-8")
    target.write_text(source, "utf-8")
    return target
