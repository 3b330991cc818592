from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from newsletter.errors import TemplateError
from newsletter.parse import parse_issue
from newsletter.recipient_fields import fill
from newsletter.render import (
    mjml_to_html,
    render_issue,
    render_mjml,
    sample_fields,
)
from newsletter.settings import Settings, load_settings

from .regenerate_goldens import GOLDEN, REPO, render_samples


def test_rendered_samples_match_the_golden_files() -> None:
    """Run `make goldens` after an intended change, and review the diff."""
    rendered = render_samples()
    expected = {p.relative_to(GOLDEN) for p in GOLDEN.rglob("*") if p.is_file()}
    assert set(rendered) == expected
    for relative, content in rendered.items():
        golden = (GOLDEN / relative).read_text("utf-8")
        assert content == golden, f"{relative} differs from its golden file"


def test_a_build_is_deterministic(settings: Settings, write_issue: Callable[..., Path]) -> None:
    path = write_issue()
    first = render_issue(parse_issue(path), settings)
    second = render_issue(parse_issue(path), settings)
    assert first.html.encode() == second.html.encode()
    assert first.text.encode() == second.text.encode()


@pytest.fixture
def rendered_html(settings: Settings, write_issue: Callable[..., Path]) -> str:
    return render_issue(parse_issue(write_issue()), settings).html


def test_placeholders_survive_mjml_and_the_inliner(rendered_html: str) -> None:
    assert "[[name]]" in rendered_html  # from the teaser
    assert "[[email]]" in rendered_html
    assert 'href="[[unsubscribe_url]]"' in rendered_html


def test_inlined_html_keeps_the_doctype_and_important_media_rules(rendered_html: str) -> None:
    assert rendered_html.lower().startswith("<!doctype html>")
    styles = "\n".join(re.findall(r"<style[^>]*>(.*?)</style>", rendered_html, re.S))
    # MJML's responsive column rule, and our dark-mode rules, with their !important.
    assert re.search(r"@media only screen and \(min-width:\s*480px\)\s*\{[^}]*!important", styles)
    assert re.search(r"@media \(prefers-color-scheme: dark\)\s*\{[^}]*!important", styles)
    assert '<meta name="color-scheme" content="light dark">' in rendered_html
    # Plain rules were moved into style attributes.
    assert re.search(r'<td style="[^"]*border-left:\s*4px solid #1f5f5b', rendered_html)
    assert "googleapis" not in rendered_html  # no third-party web fonts


def test_email_contains_every_part_a_subscriber_needs(rendered_html: str) -> None:
    assert 'href="https://digest.example.org/2026-10/"' in rendered_html  # view in browser
    assert "Three studies for the consulting room." in rendered_html  # preheader
    assert "Practice Implications" in rendered_html
    assert 'href="https://doi.org/10.1037/pst0000185"' in rendered_html
    assert (
        "Eubanks,\u00a0C.\u00a0F., Muran,\u00a0J.\u00a0C., &amp; Safran,\u00a0J.\u00a0D. (2018)"
        in rendered_html
    )
    assert "Kleinstäuber" in rendered_html and "β = −.31" in rendered_html
    assert "12 Example Street" in rendered_html  # postal address
    assert "You receive this email because" in rendered_html
    assert 'href="https://digest.example.org/topics/common-factors/"' in rendered_html


def test_text_part_is_wrapped_and_lists_its_links(
    settings: Settings, write_issue: Callable[..., Path]
) -> None:
    text = render_issue(parse_issue(write_issue()), settings).text
    for line in text.splitlines():
        assert len(line) <= 72 or line.startswith(("[", "http")), line
    assert "1. REPAIRING RUPTURES HELPS" in text
    assert "PRACTICE IMPLICATIONS" in text
    assert "https://doi.org/10.1037/pst0000185" in text
    assert "Unsubscribe: [[unsubscribe_url]]" in text
    assert "<" not in text.replace("<=", "")  # no HTML in the text part


def test_markdown_links_become_numbered_references_in_text(
    settings: Settings, write_issue: Callable[..., Path]
) -> None:
    from .conftest import VALID_ISSUE

    path = write_issue(
        VALID_ISSUE.replace(
            "Notice ruptures", "Read [the guide](https://example.org/g). Notice ruptures"
        )
    )
    text = render_issue(parse_issue(path), settings).text
    assert "Read the guide [1]. Notice ruptures" in text
    assert "Links:\n[1] https://example.org/g" in text


def test_author_text_cannot_inject_html(
    settings: Settings, write_issue: Callable[..., Path]
) -> None:
    from .conftest import VALID_ISSUE

    path = write_issue(VALID_ISSUE.replace("Notice ruptures", "<script>alert(1)</script> Notice"))
    html = render_issue(parse_issue(path), settings).html
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html


def test_fill_placeholders_escapes_html_but_not_text() -> None:
    template = '<a href="[[unsubscribe_url]]">[[name]]</a> [[email]] [[other]]'
    values = {
        "name": 'O\'Brien & "Sons"',
        "email": "a@b.c",
        "unsubscribe_url": "https://x/u?a=1&b=2",
    }
    html = fill(template, values, html=True)
    assert html == (
        '<a href="https://x/u?a=1&amp;b=2">O&#x27;Brien &amp; &quot;Sons&quot;</a> a@b.c [[other]]'
    )
    assert fill("[[name]]", values, html=False) == 'O\'Brien & "Sons"'


def test_a_template_in_the_newsletter_folder_overrides_the_packaged_one(
    tmp_path: Path, write_issue: Callable[..., Path]
) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "_footer.mjml").write_text(
        '<mj-section><mj-column><mj-text>Custom footer <a href="[[unsubscribe_url]]">leave</a>'
        "</mj-text></mj-column></mj-section>",
        "utf-8",
    )
    settings = load_settings(None, root=tmp_path)
    html = render_issue(parse_issue(write_issue()), settings).html
    assert "Custom footer" in html
    assert "12 Example Street" not in html  # the default footer is gone...
    assert (
        "Practice Implications" in html
    )  # ...and every other partial still comes from the package


def test_a_broken_template_is_a_clear_error(
    tmp_path: Path, write_issue: Callable[..., Path]
) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "_header.mjml").write_text("{% if %}", "utf-8")
    settings = load_settings(None, root=tmp_path)
    with pytest.raises(TemplateError, match=r"_header.mjml:1: "):
        render_mjml(parse_issue(write_issue()), settings)


def test_invalid_mjml_is_a_clear_error() -> None:
    with pytest.raises(TemplateError, match="the MJML template does not render"):
        mjml_to_html("<mjml><mj-body><mj-section>")


def test_sample_preview_fields_leave_no_placeholder(
    settings: Settings, write_issue: Callable[..., Path]
) -> None:
    rendered = render_issue(parse_issue(write_issue()), settings)
    html = fill(rendered.html, sample_fields(settings), html=True)
    assert "[[" not in html
    assert "Dear Alex Sample," in html


def test_repository_settings_file_is_valid() -> None:
    settings = load_settings(REPO / "newsletter.toml")
    assert settings.provider == "outbox"
    assert settings.paths.issues == REPO / "issues"


def test_enumerations_stay_letters_in_both_parts(settings: Settings) -> None:
    case = REPO / "tests" / "cases" / "typography.md"
    rendered = render_issue(parse_issue(case), settings)
    for part in (rendered.html, rendered.text):
        assert "(c) their repair" in part and "silence (tm)" in part
        assert not {"©", "®", "™", "…"} & set(part)
        assert "Two hyphens -- and three dots ..." in part
    assert "“straight quotes”" in rendered.text  # smart quotes stay on
