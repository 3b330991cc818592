from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from newsletter.errors import IssueFileError
from newsletter.parse import parse_issue, read_issue
from newsletter.taxonomy import Taxonomy

from .conftest import SAMPLE_ISSUES, VALID_ISSUE


def test_valid_issue_is_read_into_the_content_model(write_issue: Callable[..., Path]) -> None:
    issue = parse_issue(write_issue())
    assert issue.month == "2026-10"
    assert issue.subject == "Ruptures, feedback and dropout"
    assert issue.intro.startswith("Dear [[name]]")
    assert [a.title for a in issue.articles] == [
        "Repairing ruptures helps",
        "Feedback reduces deterioration",
    ]
    first, second = issue.articles
    assert first.citation.authors == ("Eubanks, C. F.", "Muran, J. C.", "Safran, J. D.")
    assert first.citation.year == 2018
    assert first.citation.formatted() == (
        "Eubanks, C. F., Muran, J. C., & Safran, J. D. (2018). Alliance rupture repair: "
        "A meta-analysis. Psychotherapy, 55(4), 508–519."
    )
    assert first.topics == ("Alliance and Therapeutic Relationship", "Common Factors")
    assert first.research_type == "Meta-analysis"
    assert first.line == 9
    assert "β = −.31" in first.summary
    assert first.practice_implications == "Notice ruptures and *talk* about them."
    # A DOI given as a resolver URL is stored bare and linked through the resolver.
    assert second.citation.doi == "10.1037/pst0000167"
    assert second.citation.link == "https://doi.org/10.1037/pst0000167"
    assert issue.topics == (
        "Alliance and Therapeutic Relationship",
        "Common Factors",
        "Feedback and Progress Monitoring",
    )


@pytest.mark.parametrize("path", SAMPLE_ISSUES, ids=[p.name for p in SAMPLE_ISSUES])
def test_sample_issues_have_no_problems(path: Path) -> None:
    result = read_issue(path)
    assert result.problems == ()
    assert result.issue is not None
    assert 2 <= len(result.issue.articles) <= 3


def test_there_are_three_sample_issues() -> None:
    assert len(SAMPLE_ISSUES) == 3


def _replace(old: str, new: str) -> str:
    assert old in VALID_ISSUE, old
    return VALID_ISSUE.replace(old, new, 1)


MALFORMED = [
    pytest.param(
        _replace("## Practice Implications\nNotice ruptures and *talk* about them.\n", ""),
        9,
        "article 'Repairing ruptures helps' has no '## Practice Implications' section",
        id="missing-practice-implications",
    ),
    pytest.param(
        _replace("DOI: 10.1037/pst0000185\n", ""),
        9,
        "article 'Repairing ruptures helps': the citation needs a 'DOI:' or a 'URL:' line",
        id="citation-without-doi-or-url",
    ),
    pytest.param(
        _replace("preheader:", "preheadr:"),
        5,
        "unknown front matter key 'preheadr'; did you mean 'preheader'?",
        id="unknown-front-matter-key",
    ),
    pytest.param(
        _replace("month: 2026-10", "month: 2026-13"),
        2,
        "month must be YYYY-MM with a month from 01 to 12, not '2026-13'",
        id="month-out-of-range",
    ),
    pytest.param(
        _replace("month: 2026-10", "month: October 2026"),
        2,
        "month must be YYYY-MM",
        id="month-not-yyyy-mm",
    ),
    pytest.param(
        _replace("month: 2026-10", "month: 2026-10-01"),
        2,
        "month must be YYYY-MM (e.g. 2026-10), not a full date",
        id="month-as-date",
    ),
    pytest.param(
        _replace(
            "Topics: Feedback and Progress Monitoring", "Topics: Feedback and Progres Monitoring"
        ),
        33,
        "unknown topic 'Feedback and Progres Monitoring'; did you mean "
        "'Feedback and Progress Monitoring'?",
        id="misspelt-topic",
    ),
    pytest.param(
        VALID_ISSUE.split("# Repairing")[0],
        7,
        "no articles",
        id="no-articles",
    ),
    pytest.param(
        _replace("Dear [[name]], this month I write about ruptures in the alliance.\n", ""),
        7,
        "the teaser is missing",
        id="no-teaser",
    ),
    pytest.param(
        _replace("Year: 2018\n", "Yeer: 2018\n"),
        11,
        "unknown citation field 'Yeer'; did you mean 'year'?",
        id="unknown-citation-field",
    ),
    pytest.param(
        _replace("Year: 2018\n", "Year: 18\n"),
        11,
        "Year must be a four-digit year",
        id="bad-year",
    ),
    pytest.param(
        _replace("DOI: 10.1037/pst0000185", "DOI: pst0000185"),
        16,
        "DOI 'pst0000185' is not a DOI",
        id="bad-doi",
    ),
    pytest.param(
        _replace(
            "## Practice Implications\nNotice ruptures and *talk* about them.\n",
            "## Practice Implications\n\n",
        ),
        22,
        "the Practice Implications section is empty",
        id="empty-practice-implications",
    ),
    pytest.param(
        _replace("Repair was associated with outcome, r = .29 (β = −.31, R² = .13).\n", ""),
        9,
        "has no summary",
        id="empty-summary",
    ),
    pytest.param(
        _replace(
            "Authors: Eubanks, C. F.; Muran, J. C.; Safran, J. D.\n", "Eubanks and colleagues\n"
        ),
        10,
        "has no citation lines",
        id="no-citation-block",
    ),
    pytest.param(
        "month: 2026-10\n" + VALID_ISSUE,
        1,
        "the file must start with a '---' line",
        id="no-front-matter",
    ),
    pytest.param(
        VALID_ISSUE.replace("---\nDear", "Dear", 1),
        1,
        "never closed",
        id="front-matter-not-closed",
    ),
    pytest.param(
        _replace("subject: Ruptures, feedback and dropout", "subject: [unclosed"),
        4,
        "front matter is not valid YAML",
        id="yaml-syntax",
    ),
    pytest.param(
        _replace("subject: Ruptures, feedback and dropout\n", ""),
        1,
        "front matter is missing 'subject'",
        id="missing-subject",
    ),
    pytest.param(
        _replace("title: October 2026", "title: October 2026\ntitle: again"),
        4,
        "'title' is given twice (first on line 3)",
        id="duplicate-key",
    ),
]


@pytest.mark.parametrize(("text", "line", "message"), MALFORMED)
def test_malformed_issue_reports_message_and_line(
    write_issue: Callable[..., Path], text: str, line: int, message: str
) -> None:
    path = write_issue(text)
    with pytest.raises(IssueFileError) as caught:
        parse_issue(path)
    rendered = [str(p) for p in caught.value.problems]
    expected_prefix = f"{path}:{line}: " if line else f"{path}: "
    assert any(r.startswith(expected_prefix) and message in r for r in rendered), rendered


def test_every_problem_is_reported_in_one_run(write_issue: Callable[..., Path]) -> None:
    text = _replace("month: 2026-10", "month: 2026-13").replace("Year: 2018", "Year: nope", 1)
    text = text.replace("Topics: Feedback and Progress Monitoring", "Topics: Feedbak")
    with pytest.raises(IssueFileError) as caught:
        parse_issue(write_issue(text))
    lines = [p.line for p in caught.value.problems]
    assert lines == [2, 11, 33]


def test_file_that_is_not_utf8_is_reported_with_its_line(write_issue: Callable[..., Path]) -> None:
    raw = (
        VALID_ISSUE.replace("Flückiger", "x")
        .encode("utf-8")
        .replace("Kleinstäuber".encode(), "Kleinst\xe4uber".encode("latin-1"))
    )
    path = write_issue(raw=raw)
    with pytest.raises(IssueFileError) as caught:
        parse_issue(path)
    (problem,) = caught.value.problems
    assert problem.line == 26
    assert "not UTF-8" in problem.message and "0xe4" in problem.message


def test_month_must_match_the_file_name(write_issue: Callable[..., Path]) -> None:
    path = write_issue(name="2026-11.md")
    with pytest.raises(
        IssueFileError, match=r"month 2026-10 does not match the file name 2026-11.md"
    ):
        parse_issue(path)


def test_a_heading_inside_a_code_block_does_not_start_an_article(
    write_issue: Callable[..., Path],
) -> None:
    text = _replace("Notice ruptures and *talk* about them.", "```\n# not a heading\n```")
    issue = parse_issue(write_issue(text))
    assert len(issue.articles) == 2
    assert "# not a heading" in issue.articles[0].practice_implications


def test_a_newsletter_may_replace_the_taxonomy(write_issue: Callable[..., Path]) -> None:
    taxonomy = Taxonomy(("Alliance and Therapeutic Relationship", "Common Factors"))
    with pytest.raises(IssueFileError, match="unknown topic 'Feedback and Progress Monitoring'"):
        parse_issue(write_issue(), taxonomy)


def test_byte_order_mark_and_crlf_line_ends_are_accepted(write_issue: Callable[..., Path]) -> None:
    raw = b"\xef\xbb\xbf" + VALID_ISSUE.replace("\n", "\r\n").encode("utf-8")
    issue = parse_issue(write_issue(raw=raw))
    assert issue.articles[1].practice_implications.startswith("- Measure")


def test_text_after_a_hash_in_the_front_matter_is_not_silently_dropped(
    write_issue: Callable[..., Path],
) -> None:
    text = _replace("subject: Ruptures, feedback and dropout", "subject: Issue #9 — feedback")
    with pytest.raises(
        IssueFileError, match=r":4: 'subject': the text after ' #' is read as a YAML"
    ):
        parse_issue(write_issue(text))
    quoted = _replace("subject: Ruptures, feedback and dropout", 'subject: "Issue #9 — feedback"')
    assert parse_issue(write_issue(quoted)).subject == "Issue #9 — feedback"


def test_doi_with_trailing_full_stop_is_refused(write_issue: Callable[..., Path]) -> None:
    text = _replace("DOI: 10.1037/pst0000185", "DOI: 10.1037/pst0000185.")
    with pytest.raises(IssueFileError, match="remove the punctuation at its end"):
        parse_issue(write_issue(text))


def test_underlined_paragraph_gets_a_warning(write_issue: Callable[..., Path]) -> None:
    text = _replace("r = .29 (β = −.31, R² = .13).\n", "r = .29 (β = −.31, R² = .13).\n---\n")
    result = read_issue(write_issue(text))
    assert result.issue is not None
    (warning,) = result.problems
    assert warning.severity == "warning" and warning.line == 21
    assert "makes it a heading" in warning.message


@pytest.mark.parametrize(
    ("authors", "expected"),
    [
        ("Rubel, J. A.", "Rubel, J. A."),
        ("Rubel, J. A.; Lutz, W.", "Rubel, J. A., & Lutz, W."),
        ("Rubel, J. A.; van der Berg, M.; et al.", "Rubel, J. A., van der Berg, M., et al."),
        ("A, A.; B, B.; …; Z, Z.", "A, A., B, B., . . . Z, Z."),
        ("A, A.; B, B.; ...; Z, Z.", "A, A., B, B., . . . Z, Z."),
    ],
    ids=["one", "two", "et-al", "ellipsis", "three-dots"],
)
def test_author_lists_follow_apa_7(
    authors: str, expected: str, write_issue: Callable[..., Path]
) -> None:
    issue = parse_issue(
        write_issue(VALID_ISSUE.replace("Eubanks, C. F.; Muran, J. C.; Safran, J. D.", authors))
    )
    citation = issue.articles[0].citation
    assert citation.author_list == expected
    assert citation.author_list_unbroken.replace("\u00a0", " ") == expected
    assert "J.\u00a0A." in citation.author_list_unbroken or "Rubel" not in authors


def test_a_title_ending_in_a_question_gets_a_space_and_no_period(
    write_issue: Callable[..., Path],
) -> None:
    issue = parse_issue(write_issue(VALID_ISSUE.replace("A meta-analysis", "Does it help?")))
    assert "Does it help? Psychotherapy, 55(4)" in issue.articles[0].citation.formatted()


def test_online_first_says_advance_online_publication(write_issue: Callable[..., Path]) -> None:
    text = VALID_ISSUE.replace("Volume: 55(4)\nPages: 508–519\n", "Online first: yes\n")
    citation = parse_issue(write_issue(text)).articles[0].citation
    assert citation.online_first
    assert citation.formatted().endswith(
        "Alliance rupture repair: A meta-analysis. Psychotherapy. Advance online publication."
    )


def test_online_first_takes_yes_or_no_and_warns_beside_a_volume(
    write_issue: Callable[..., Path],
) -> None:
    path = write_issue(
        VALID_ISSUE.replace("Volume: 55(4)\n", "Volume: 55(4)\nOnline first: soon\n", 1)
    )
    problems = [str(p) for p in read_issue(path).problems]
    assert f"{path}:15: Online first must be 'yes' or 'no', not 'soon'" in problems
    path = write_issue(
        VALID_ISSUE.replace("Volume: 55(4)\n", "Volume: 55(4)\nOnline first: yes\n", 1)
    )
    assert [str(p) for p in read_issue(path).problems] == [
        f"{path}:15: warning: the citation has both 'Online first: yes' and a Volume; once an "
        "article has a volume it is no longer an advance online publication: remove one of them"
    ]


def test_one_article_is_counted_in_the_singular(write_issue: Callable[..., Path]) -> None:
    single = VALID_ISSUE[: VALID_ISSUE.index("# Feedback reduces deterioration")]
    path = write_issue(single)
    assert [str(p) for p in read_issue(path).problems] == [
        f"{path}:9: warning: this issue has 1 article; the digest usually has two or three"
    ]


@pytest.mark.parametrize(
    ("written", "message"),
    [
        (
            "Empathy, Training, Attendance, Attrition, and Drop-Out",
            "unknown topic 'Empathy, Training, Attendance, Attrition, and Drop-Out': topics are "
            "separated by ';', not ','; write 'Topics: Empathy; Training; Attendance, "
            "Attrition, and Drop-Out'",
        ),
        (
            "Empathy, Trainin",
            "unknown topic 'Empathy, Trainin': topics are separated by ';', not ','; "
            "did you mean 'Topics: Empathy; Training'?",
        ),
        ("PTSD", "unknown topic 'PTSD'; did you mean 'Trauma and/or PTSD'? "),
        (
            "CBT",
            "unknown topic 'CBT'; did you mean 'Cognitive Therapy (CT) and "
            "Cognitive-Behavioural Therapy (CBT)'? ",
        ),
        ("IPT", "unknown topic 'IPT'; did you mean 'Interpersonal Psychotherapy (IPT)'? "),
        (
            "depressive symptoms",
            "unknown topic 'depressive symptoms'; did you mean "
            "'Depression and Depressive Symptoms'? ",
        ),
        ("medication", "unknown topic 'medication'; did you mean 'Medications/Pharmacotherapy'? "),
        ("Empthy", "unknown topic 'Empthy'; did you mean 'Empathy'? "),
    ],
    ids=["commas", "commas-misspelt", "ptsd", "cbt", "ipt", "words", "stem", "spelling"],
)
def test_unknown_topics_get_a_suggestion_that_teaches(
    written: str, message: str, write_issue: Callable[..., Path]
) -> None:
    path = write_issue(
        VALID_ISSUE.replace("Topics: Feedback and Progress Monitoring", f"Topics: {written}")
    )
    problems = [str(p) for p in read_issue(path).problems]
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:33: {message}"), problems[0]


@pytest.mark.parametrize("loader", ["SafeLoader", "CSafeLoader"])
def test_an_unquoted_colon_in_the_subject_says_to_quote_it(
    loader: str, write_issue: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from newsletter import parse

    if not hasattr(yaml, loader):
        pytest.skip(f"PyYAML was built without {loader}")
    monkeypatch.setattr(parse, "_YamlLoader", getattr(yaml, loader))
    path = write_issue(
        VALID_ISSUE.replace(
            "subject: Ruptures, feedback and dropout", 'subject: Ruptures: what "repair" means'
        )
    )
    assert [str(p) for p in read_issue(path).problems] == [
        f"{path}:4: 'subject': the value contains ': ', which YAML reads as another key; "
        'put the value in quotes: subject: "Ruptures: what \\"repair\\" means"'
    ]
