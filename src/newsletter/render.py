"""Rendering an Issue: Jinja2 -> MJML -> HTML (mjml-python) -> inlined HTML, and the text part.

Rendering happens once per issue. Per-recipient fields stay as placeholders that survive MJML
and the CSS inliner unchanged, and are filled in per message by plain substitution (see
``newsletter.recipient_fields``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import jinja2
import mjml
from markdown_it import MarkdownIt
from markupsafe import Markup

from newsletter.errors import TemplateError
from newsletter.inline import inline_css
from newsletter.issue import Issue
from newsletter.plaintext import TextRenderer
from newsletter.recipient_fields import PLACEHOLDERS, fill, recipient_values
from newsletter.settings import Settings
from newsletter.taxonomy import slugify

# Smart quotes only: the "replacements" rule would turn the (a), (b), (c) of research prose
# into "©" (and (r), (tm), "--", "..." likewise); the author's own dashes and quotes stay.
_markdown = MarkdownIt("commonmark", {"html": False, "typographer": True}).enable("smartquotes")
_HEAD_META = (
    '<meta name="color-scheme" content="light dark">'
    '<meta name="supported-color-schemes" content="light dark">'
)


@dataclass(frozen=True)
class RenderedIssue:
    """One issue, rendered once; ``html`` and ``text`` still hold the placeholders."""

    issue: Issue
    subject: str
    html: str
    text: str


def template_environment(settings: Settings) -> jinja2.Environment:
    """Templates from the newsletter's templates/ folder first, then the packaged defaults.

    One environment per templates folder is kept, so compiled templates are reused; Jinja
    still notices when a template file changes (auto_reload), which the live preview needs.
    """
    return _environment(settings.paths.templates)


@functools.lru_cache(maxsize=8)
def _environment(templates: Path) -> jinja2.Environment:
    loader = jinja2.ChoiceLoader(
        [
            jinja2.FileSystemLoader(templates),
            jinja2.PackageLoader("newsletter", "templates"),
        ]
    )
    env = jinja2.Environment(
        loader=loader,
        autoescape=jinja2.select_autoescape(["mjml", "html", "xml"], default_for_string=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["markdown"] = markdown_to_html
    env.filters["slugify"] = slugify
    return env


def markdown_to_html(source: str) -> Markup:
    # Raw HTML is off in the parser, so the author's text cannot inject markup.
    return Markup(_markdown.render(source))


def _context(issue: Issue, settings: Settings, relative: bool = False) -> dict[str, object]:
    def topic_url(topic: str) -> str:
        return f"{settings.base_url}/topics/{slugify(topic)}/"

    return {
        "issue": issue,
        "settings": settings,
        "style": settings.style,
        # The welcome is no archive page: its "read online" is the archive's front page.
        "issue_url": f"{settings.base_url}/"
        if issue.is_welcome
        else settings.issue_url(issue.month),
        "topic_url": topic_url,
        "placeholders": PLACEHOLDERS,
    }


@contextmanager
def template_errors(name: str) -> Iterator[None]:
    """Turn Jinja's exceptions while rendering template ``name`` into a TemplateError."""
    try:
        yield
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(
            f"template {exc.name!r} not found in templates/ or the defaults"
        ) from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{exc.filename or exc.name}:{exc.lineno}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template {name}: {exc.message}") from None


def _render_template(env: jinja2.Environment, name: str, context: Mapping[str, object]) -> str:
    with template_errors(name):
        return env.get_template(name).render(context)


def template_source(settings: Settings, name: str) -> str:
    """The text of template ``name`` as the settings find it (the user's, or the packaged one)."""
    env = template_environment(settings)
    assert env.loader is not None
    with template_errors(name):
        source, _, _ = env.loader.get_source(env, name)
    return source


def render_template(settings: Settings, name: str, context: Mapping[str, object]) -> str:
    """Render one template of the newsletter (its override, or the packaged default)."""
    return _render_template(template_environment(settings), name, context)


def render_mjml(issue: Issue, settings: Settings, env: jinja2.Environment | None = None) -> str:
    """The issue as an MJML document."""
    env = env or template_environment(settings)
    context = _context(issue, settings)
    context["intro_html"] = markdown_to_html(issue.intro)
    return _render_template(env, "email.mjml", context)


def mjml_to_html(source: str) -> str:
    """MJML to HTML with MRML; web fonts off, since they would load from a third party."""
    try:
        rendered = mjml.mjml2html(source, disable_comments=True, fonts={})
    except Exception as exc:  # MRML raises plain exceptions carrying its parser's message
        raise TemplateError(f"the MJML template does not render: {exc}") from None
    # MRML has no way to add head meta tags; dark-mode support needs color-scheme.
    return rendered.replace("<head>", "<head>" + _HEAD_META, 1)


def render_text(issue: Issue, settings: Settings, env: jinja2.Environment | None = None) -> str:
    """The plain-text part, from the same Issue."""
    env = env or template_environment(settings)
    context = _context(issue, settings)
    context["text"] = TextRenderer()
    text = _render_template(env, "email.txt", context)
    # Collapse the blank-line runs that template logic leaves behind.
    text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
    return text


def render_issue(issue: Issue, settings: Settings) -> RenderedIssue:
    """Render the issue once: inlined HTML and plain text, both with placeholders."""
    env = template_environment(settings)
    html = inline_css(mjml_to_html(render_mjml(issue, settings, env)))
    text = render_text(issue, settings, env)
    return RenderedIssue(issue=issue, subject=issue.subject, html=html, text=text)


def sample_fields(settings: Settings) -> dict[str, str]:
    """A made-up recipient for previews."""
    return recipient_values(
        "Alex Sample", "alex.sample@example.com", f"{settings.base_url}/unsubscribe/preview-token"
    )


def write_preview(
    rendered: RenderedIssue, settings: Settings, out_dir: Path | None = None
) -> tuple[Path, Path]:
    """Write email.html and email.txt with the sample recipient filled in; return their paths."""
    folder = out_dir or settings.paths.build / rendered.issue.month
    folder.mkdir(parents=True, exist_ok=True)
    fields = sample_fields(settings)
    html_path = folder / "email.html"
    text_path = folder / "email.txt"
    html_path.write_text(fill(rendered.html, fields, html=True), "utf-8")
    text_path.write_text(fill(rendered.text, fields, html=False), "utf-8")
    return html_path, text_path
