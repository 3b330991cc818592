"""Hostile issue files: each is an error at path:line that names what is wrong, never a
traceback, an MJML error or an email that silently lacks part of the issue."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli import main
from newsletter.errors import IssueFileError
from newsletter.parse import parse_issue
from newsletter.render import render_issue
from newsletter.settings import Settings

from .conftest import VALID_ISSUE

WriteIssue = Callable[..., Path]
SUBJECT = "subject: Ruptures, feedback and dropout"
FIRST_PRACTICE = "Notice ruptures and *talk* about them."


def nested_list(depth: int) -> str:
    return "\n".join("  " * level + f"- level {level + 1}" for level in range(depth))


def problems_of(path: Path) -> list[str]:
    with pytest.raises(IssueFileError) as caught:
        parse_issue(path)
    return [str(p) for p in caught.value.problems]


@pytest.fixture(autouse=True)
def in_the_newsletter_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def check(path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["check", "--offline", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result.exit_code, result.output


# --- 10.10: nothing the Markdown parser cannot keep passes -----------------------------------


def test_a_list_nested_ten_levels_is_an_error_at_its_line(write_issue: WriteIssue) -> None:
    text = VALID_ISSUE.replace(FIRST_PRACTICE, f"{FIRST_PRACTICE}\n\n{nested_list(10)}")
    path = write_issue(text)
    deepest = text.split("\n").index("  " * 9 + "- level 10") + 1
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:{deepest}: lists or quotes are nested too deeply")
    assert "at most 9 levels" in problem
    code, output = check(path)
    assert code == 1 and f"{path}:{deepest}:" in output


@pytest.mark.parametrize(
    "deep",
    [nested_list(60), "> " * 25 + "quoted", "\n".join("  " * n + "1. x" for n in range(30))],
    ids=["list-60", "quotes-25", "ordered-30"],
)
def test_deeper_nesting_is_an_error_too(write_issue: WriteIssue, deep: str) -> None:
    path = write_issue(VALID_ISSUE.replace(FIRST_PRACTICE, f"{FIRST_PRACTICE}\n\n{deep}"))
    assert any("nested too deeply" in p for p in problems_of(path))


@pytest.mark.parametrize(
    "deepest", [nested_list(9), "> " * 19 + "level 9"], ids=["list-9", "quotes-19"]
)
def test_the_deepest_nesting_allowed_keeps_every_article(
    write_issue: WriteIssue, settings: Settings, deepest: str
) -> None:
    text = VALID_ISSUE.replace(FIRST_PRACTICE, f"{FIRST_PRACTICE}\n\n{deepest}")
    issue = parse_issue(write_issue(text))
    rendered = render_issue(issue, settings)
    assert len(issue.articles) == 2
    for needle in ("level 9", "got feedback did better", "not-on-track alerts"):
        assert needle in rendered.html and needle in rendered.text


# --- 10.14: tracebacks -----------------------------------------------------------------------


def test_a_python_object_tag_is_refused_and_never_run(
    write_issue: WriteIssue, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    path = write_issue(
        VALID_ISSUE.replace(
            "title: October 2026", f'title: !!python/object/apply:os.system ["touch {marker}"]'
        )
    )
    assert problems_of(path) == [
        f"{path}:3: 'title' must be text on one line, not a YAML list or mapping"
    ]
    scalar = write_issue(
        VALID_ISSUE.replace("title: October 2026", "title: !!python/name:os.system ''")
    )
    assert problems_of(scalar) == [
        f"{scalar}:3: 'title': the YAML tag tag:yaml.org,2002:python/name:os.system "
        "is not allowed; write plain text"
    ]
    code, output = check(path)
    assert code == 1 and "Error:" in output
    assert not marker.exists()


def test_a_title_of_5000_nested_brackets_is_an_error_not_a_recursion_error(
    write_issue: WriteIssue,
) -> None:
    brackets = "[" * 5000 + "x" + "]" * 5000
    path = write_issue(VALID_ISSUE.replace("title: October 2026", f"title: {brackets}"))
    assert problems_of(path) == [
        f"{path}:3: 'title' must be text on one line, not a YAML list or mapping"
    ]
    code, _ = check(path)
    assert code == 1


def test_5000_brackets_as_text_get_the_checks_answer(write_issue: WriteIssue) -> None:
    brackets = "[" * 5000 + "x" + "]" * 5000
    quoted = write_issue(VALID_ISSUE.replace("title: October 2026", f'title: "{brackets}"'))
    heading = write_issue(VALID_ISSUE.replace("# Repairing ruptures helps", f"# {brackets}"))
    for path in (quoted, heading):
        code, output = check(path)
        assert code == 1 and "is left unreplaced" in output


# --- 10.15 / 10.16: control characters name the file, line and field -------------------------


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        (
            SUBJECT,
            'subject: "Rup\\x1bture"',
            ":4: 'subject' contains the control character U+001B ESCAPE",
        ),
        (
            SUBJECT,
            'subject: "Rup\\0ture"',
            ":4: 'subject' contains the control character U+0000 NULL",
        ),
        (
            SUBJECT,
            'subject: "a\\vb\\fc"',
            ":4: 'subject' contains the control character U+000B LINE TABULATION",
        ),
        (
            SUBJECT,
            'subject: "Rup\\x7fture"',
            ":4: 'subject' contains the control character U+007F DELETE",
        ),
        (
            SUBJECT,
            'subject: "Rup\\u2028ture"',
            ":4: 'subject' contains the control character U+2028 LINE SEPARATOR",
        ),
        (
            SUBJECT,
            'subject: "Rup\\x85ture"',
            ":4: 'subject' contains the control character U+0085 NEXT LINE",
        ),
        (
            "title: October 2026",
            'title: "Oct\\0ober"',
            ":3: 'title' contains the control character U+0000 NULL",
        ),
        (
            "preheader: Three studies for the consulting room.",
            'preheader: "Three\\fstudies"',
            ":5: 'preheader' contains the control character U+000C FORM FEED",
        ),
        (
            "# Repairing ruptures helps",
            "# Repairing \x0b ruptures",
            ":9: the heading contains the control character U+000B LINE TABULATION",
        ),
        (
            "Repair was associated",
            "Repair \x1b[31m was associated",
            ":20: the text contains the control character U+001B ESCAPE",
        ),
        (
            "Journal: Psychotherapy\nVolume: 55(4)\nPages: 508",
            "Journal: Psycho\x0ctherapy\nVolume: 55(4)\nPages: 508",
            ":13: the citation field 'Journal' contains the control character U+000C FORM FEED",
        ),
    ],
    ids=[
        "esc",
        "nul",
        "vt-ff",
        "del",
        "u2028",
        "nel",
        "title",
        "preheader",
        "heading",
        "body",
        "citation",
    ],
)
def test_control_characters_are_named_with_their_line_and_field(
    write_issue: WriteIssue, replace: str, by: str, expected: str
) -> None:
    text = VALID_ISSUE.replace(replace, by)
    path = write_issue(text)
    problems = problems_of(path)
    assert [p for p in problems if p.startswith(f"{path}{expected}")], problems
    code, output = check(path)
    assert code == 1 and "MJML" not in output and f"{path}{expected}" in output


def test_a_tab_in_the_text_is_fine(write_issue: WriteIssue) -> None:
    path = write_issue(VALID_ISSUE.replace("Repair was associated", "Repair\twas associated"))
    assert parse_issue(path).articles[0].summary.startswith("Repair\twas")
