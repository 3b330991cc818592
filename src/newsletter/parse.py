"""Reading an issue file: Markdown with YAML front matter, checked down to the line.

The file's shape (see docs/issue-format.md)::

    ---
    month: 2026-10
    title: October 2026
    subject: …
    preheader: …            (optional)
    ---
    The teaser: everything before the first article.

    # An article's headline
    Authors: Surname, A. B.; Other, C.
    Year: 2024
    Title: The published article's title
    Journal: Journal Name
    Volume: 12(3)
    Pages: 100–120
    DOI: 10.1234/abcd
    Topics: Empathy; Therapist Factors
    Research type: Meta-analysis

    The summary, in Markdown.

    ## Practice Implications
    What it means for practice, in Markdown.

Every problem is collected, not just the first, so the author can fix the file in one pass.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from markdown_it import MarkdownIt

from newsletter.english import counted
from newsletter.errors import IssueFileError, Problem, describe_character
from newsletter.issue import WELCOME, Article, Citation, Issue
from newsletter.taxonomy import Taxonomy

MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
DOI = re.compile(r"^10\.\d{4,9}/\S+(?<![.,;:])$")
_DOI_PREFIXES = ("https://doi.org/", "http://doi.org/", "https://dx.doi.org/", "doi:")
_FIELD_LINE = re.compile(r"^([A-Za-z][A-Za-z _-]*?)\s*:\s*(.*)$")
PRACTICE_HEADING = "practice implications"

FRONT_MATTER_KEYS = {"month", "title", "subject", "preheader"}
REQUIRED_FRONT_MATTER = ("month", "title", "subject")
# The welcome email (issues/welcome.md) has no month, and its articles are optional.
WELCOME_FRONT_MATTER_KEYS = {"title", "subject", "preheader"}
WELCOME_REQUIRED_FRONT_MATTER = ("title", "subject")


def is_welcome_file(path: Path) -> bool:
    """A file named ``welcome.md`` is read as the welcome email, wherever it is."""
    return path.stem == WELCOME


# Citation fields as the author writes them (case and separators forgiven) -> our name.
CITATION_FIELDS = {
    "authors": "authors",
    "author": "authors",
    "year": "year",
    "title": "title",
    "journal": "journal",
    "volume": "volume",
    "pages": "pages",
    "doi": "doi",
    "url": "url",
    "topics": "topics",
    "research type": "research_type",
    "online first": "online_first",
    "advance online publication": "online_first",
}
_YES = {"yes", "true", "y"}
_NO = {"no", "false", "n"}
REQUIRED_CITATION = ("authors", "year", "title", "journal", "topics")

# Only the block structure (headings and their lines) matters here: inline parsing, the
# larger half of markdown-it's work, is left to the render stage.
_markdown = MarkdownIt("commonmark", {"html": False})
_markdown.core.ruler.disable("inline")
# markdown-it stops at this depth of nesting (lists, quotes) and silently drops the rest of
# the text, here and in the renderer. The parser looks deeper, so that it can say where.
RENDERABLE_NESTING = _markdown.options.maxNesting
_markdown.options.maxNesting = RENDERABLE_NESTING * 2
# Characters that break the MJML template (XML) or hide in text: C0 controls but tab, DEL, C1.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# In a one-line value (it becomes a header): also tab and the Unicode line separators.
_CONTROL_IN_VALUE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# libyaml's parser when PyYAML was built with it; the pure-Python one otherwise.
_YamlLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class _Collector:
    path: str
    problems: list[Problem] = field(default_factory=list)

    def error(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.path, line, message))

    def warning(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.path, line, message, "warning"))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


@dataclass(frozen=True)
class ParseResult:
    issue: Issue | None
    problems: tuple[Problem, ...]


def parse_issue(
    path: Path, taxonomy: Taxonomy | None = None, *, welcome: bool | None = None
) -> Issue:
    """Read and check an issue file; raise IssueFileError listing every error found."""
    result = read_issue(path, taxonomy, welcome=welcome)
    errors = [p for p in result.problems if p.severity == "error"]
    if errors or result.issue is None:
        raise IssueFileError(errors or [Problem(str(path), 0, "could not be read")])
    return result.issue


def read_issue(
    path: Path, taxonomy: Taxonomy | None = None, *, welcome: bool | None = None
) -> ParseResult:
    """Read an issue file, returning the Issue (when error-free) and every problem found.

    ``welcome``: read it as the welcome email (no month, articles optional); by default a
    file named ``welcome.md`` is one.
    """
    if welcome is None:
        welcome = is_welcome_file(path)
    taxonomy = taxonomy or Taxonomy.default()
    found = _Collector(str(path))
    try:
        data = path.read_bytes()
    except OSError as exc:
        found.error(0, f"cannot read the file: {exc.strerror}")
        return ParseResult(None, tuple(found.problems))
    issue = parse_text(data, path, taxonomy, found, welcome=welcome)
    return ParseResult(issue if not found.errors else None, tuple(sorted(found.problems)))


def parse_text(
    data: bytes, path: Path, taxonomy: Taxonomy, found: _Collector, *, welcome: bool = False
) -> Issue | None:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        found.error(
            line,
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8",
        )
        return None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")

    if not lines or lines[0].strip() != "---":
        found.error(1, "the file must start with a '---' line opening the front matter")
        return None
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        found.error(1, "the front matter opened here is never closed with a '---' line")
        return None

    meta = _front_matter(lines[1:end], found, first_line=2, welcome=welcome)
    body_start = end + 1  # index into lines of the body's first line
    _control_characters(lines, body_start, found)
    intro, articles = _body(lines, body_start, taxonomy, found, articles_optional=welcome)

    month = meta.get("month", ("", 0))
    if month[0] and MONTH.match(month[0]):
        stem = path.stem
        if MONTH.match(stem) and stem != month[0]:
            found.error(month[1], f"month {month[0]} does not match the file name {path.name}")
    if found.errors:
        return None
    return Issue(
        path=path,
        month=WELCOME if welcome else meta["month"][0],
        title=meta["title"][0],
        subject=meta["subject"][0],
        preheader=meta.get("preheader", ("", 0))[0],
        intro=intro,
        articles=tuple(articles),
    )


def _control_characters(lines: list[str], start: int, found: _Collector) -> None:
    for index in range(start, len(lines)):
        bad = _CONTROL.search(lines[index])
        if bad:
            where = _field_of(lines[index])
            found.error(
                index + 1,
                f"{where} contains the control character {describe_character(bad[0])}, "
                "which no email can show; remove it",
            )


def _field_of(line: str) -> str:
    """What a body line is, for a message: a heading, a citation field, or text."""
    if line.startswith("#"):
        return "the heading"
    field_line = _FIELD_LINE.match(line)
    if field_line:
        key = " ".join(field_line[1].replace("_", " ").replace("-", " ").lower().split())
        if key in CITATION_FIELDS:
            return f"the citation field '{field_line[1]}'"
    return "the text"


def _front_matter(
    block: list[str], found: _Collector, first_line: int, *, welcome: bool = False
) -> dict[str, tuple[str, int]]:
    """Front matter keys -> (value, line). Values are one-line strings."""
    known_keys = WELCOME_FRONT_MATTER_KEYS if welcome else FRONT_MATTER_KEYS
    required = WELCOME_REQUIRED_FRONT_MATTER if welcome else REQUIRED_FRONT_MATTER
    source = "\n".join(block)
    try:
        node = yaml.compose(source, Loader=_YamlLoader)
    except RecursionError:
        found.error(first_line, "front matter is nested too deeply; its values are plain text")
        return {}
    except yaml.YAMLError as exc:
        # The context mark is where the broken construct starts, which is what needs fixing;
        # the problem mark is often the line after.
        mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
        line = first_line + (mark.line if mark else 0)
        problem = getattr(exc, "problem", None) or str(exc)
        found.error(line, _yaml_advice(block, mark.line if mark else 0, problem))
        return {}
    if node is None:
        for key in required:
            found.error(first_line - 1, f"front matter is missing '{key}'")
        return {}
    if not isinstance(node, yaml.MappingNode):
        found.error(first_line, "front matter must be 'key: value' lines")
        return {}

    values: dict[str, tuple[str, int]] = {}
    present: set[str] = set()
    for key_node, value_node in node.value:
        line = first_line + key_node.start_mark.line
        key = str(key_node.value)
        present.add(key)
        if key not in known_keys:
            hint = _did_you_mean(key, known_keys)
            allowed = ", ".join(sorted(known_keys))
            what = "the welcome email has no month" if welcome and key == "month" else ""
            found.error(
                line,
                f"unknown front matter key '{key}'{hint} (allowed: {allowed})"
                + (f"; {what}" if what else ""),
            )
            continue
        if key in values:
            found.error(line, f"'{key}' is given twice (first on line {values[key][1]})")
            continue
        if not isinstance(value_node, yaml.ScalarNode):
            found.error(line, f"'{key}' must be text on one line, not a YAML list or mapping")
            continue
        try:
            value: Any = _construct(value_node)
        except yaml.YAMLError:
            found.error(
                line, f"'{key}': the YAML tag {value_node.tag} is not allowed; write plain text"
            )
            continue
        if isinstance(value, _dt.date) and key == "month":
            found.error(line, f"month must be YYYY-MM (e.g. {value:%Y-%m}), not a full date")
            continue
        if not isinstance(value, str):
            if isinstance(value, int | float) and key != "month":
                value = str(value)
            else:
                found.error(line, f"'{key}' must be text on one line")
                continue
        value = value.strip()
        raw_line = block[key_node.start_mark.line] if key_node.start_mark.line < len(block) else ""
        # (A plain scalar has no style: None from the Python parser, "" from libyaml.)
        if " #" in raw_line and "#" not in value and not value_node.style:
            found.error(
                line,
                f"'{key}': the text after ' #' is read as a YAML comment; put the value in quotes",
            )
            continue
        if "\n" in value or "\r" in value:
            found.error(line, f"'{key}' must be one line")
            continue
        bad = _CONTROL_IN_VALUE.search(value)
        if bad:
            found.error(
                line,
                f"'{key}' contains the control character {describe_character(bad[0])}, "
                "which no email can show; remove it",
            )
            continue
        values[key] = (value, line)

    for key in required:
        if key not in present:
            found.error(first_line - 1, f"front matter is missing '{key}'")
        elif key in values and not values[key][0]:
            found.error(values[key][1], f"'{key}' is empty")
    if "month" in values and values["month"][0] and not MONTH.match(values["month"][0]):
        found.error(
            values["month"][1],
            f"month must be YYYY-MM with a month from 01 to 12, not {values['month'][0]!r}",
        )
    subject = values.get("subject")
    if subject and len(subject[0]) > 90:
        found.warning(
            subject[1], f"subject is {len(subject[0])} characters; many clients cut it near 60–90"
        )
    return values


def _yaml_advice(block: list[str], index: int, problem: str) -> str:
    """What to do about a YAML error on ``block[index]``, in the author's terms."""
    raw = block[index] if 0 <= index < len(block) else ""
    key, colon, value = raw.partition(":")
    if problem.startswith("mapping values are not allowed") and colon and value.strip():
        # A second ": " in an unquoted value, as in `subject: Grief: what helps`.
        quoted = value.strip().replace("\\", "\\\\").replace('"', '\\"')
        return (
            f"'{key.strip()}': the value contains ': ', which YAML reads as another key; "
            f'put the value in quotes: {key.strip()}: "{quoted}"'
        )
    return f"front matter is not valid YAML: {problem}"


def _construct(node: yaml.Node) -> Any:
    """The Python value of one composed YAML node (safe types only)."""
    return yaml.SafeLoader("").construct_object(node, deep=True)


def _body(
    lines: list[str],
    start: int,
    taxonomy: Taxonomy,
    found: _Collector,
    *,
    articles_optional: bool = False,
) -> tuple[str, list[Article]]:
    body = lines[start:]
    tokens = _markdown.parse("\n".join(body))
    too_deep = next(
        (t for t in tokens if t.level >= RENDERABLE_NESTING and t.map and t.type != "inline"),
        None,
    )
    if too_deep is not None and too_deep.map is not None:
        found.error(
            start + too_deep.map[0] + 1,
            "lists or quotes are nested too deeply here: Markdown keeps at most "
            f"{RENDERABLE_NESTING // 2 - 1} levels of nested lists ({RENDERABLE_NESTING - 1} "
            "of quotes), and would drop this line and everything after it from the email; "
            "nest fewer levels",
        )
    # (level, first line index in body, heading text)
    headings: list[tuple[int, int, str]] = []
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.map is not None:
            text = tokens[i + 1].content.strip()
            if token.markup in ("=", "-"):
                # A "---" or "===" line right under a paragraph turns it into a heading,
                # which is rarely what the author meant.
                found.warning(
                    start + token.map[1],
                    "this line underlines the paragraph above and makes it a heading; "
                    "leave a blank line before it if you meant a separator",
                )
            headings.append((int(token.tag[1]), token.map[0], text))

    article_heads = [h for h in headings if h[0] == 1]
    intro_end = article_heads[0][1] if article_heads else len(body)
    intro = "\n".join(body[:intro_end]).strip()
    if not intro:
        found.error(
            start + 1,
            "the teaser is missing: write an introduction between the front matter "
            "and the first article",
        )
    if not article_heads:
        if articles_optional:
            return intro, []
        found.error(
            start + 1,
            "no articles: start each article with a '# Headline' line, followed by its "
            "citation lines and summary",
        )
        return intro, []

    articles: list[Article] = []
    for n, (_, head_index, title) in enumerate(article_heads):
        end_index = article_heads[n + 1][1] if n + 1 < len(article_heads) else len(body)
        subheads = [h for h in headings if h[0] >= 2 and head_index < h[1] < end_index]
        article = _article(body, head_index, end_index, title, subheads, start, taxonomy, found)
        if article is not None:
            articles.append(article)
    count = len(article_heads)
    if not articles_optional and (count == 1 or count > 3):
        found.warning(
            start + article_heads[0][1] + 1,
            f"this issue has {counted(count, 'article')}; the digest usually has two or three",
        )
    return intro, articles


def _article(
    body: list[str],
    head: int,
    end: int,
    title: str,
    subheads: list[tuple[int, int, str]],
    offset: int,
    taxonomy: Taxonomy,
    found: _Collector,
) -> Article | None:
    def lineno(index: int) -> int:
        return offset + index + 1

    head_line = lineno(head)
    if not title:
        found.error(head_line, "the article heading has no text")
    errors_before = len(found.errors)

    # The citation block: "Key: value" lines right after the heading, up to a blank line.
    i = head + 1
    while i < end and not body[i].strip():
        i += 1
    fields: dict[str, tuple[str, int]] = {}
    last_key: str | None = None
    while i < end and body[i].strip():
        line = body[i]
        match = _FIELD_LINE.match(line)
        if line[:1] in (" ", "\t") and last_key is not None:
            value, at = fields[last_key]
            fields[last_key] = (f"{value} {line.strip()}".strip(), at)
        elif match:
            raw_key = match.group(1)
            key = " ".join(raw_key.replace("_", " ").replace("-", " ").lower().split())
            if key not in CITATION_FIELDS:
                hint = _did_you_mean(key, CITATION_FIELDS)
                found.error(
                    lineno(i),
                    f"unknown citation field '{raw_key}'{hint} "
                    "(fields: Authors, Year, Title, Journal, Volume, Pages, DOI, URL, "
                    "Online first, Topics, Research type)",
                )
                last_key = None
            else:
                name = CITATION_FIELDS[key]
                if name in fields:
                    found.error(
                        lineno(i), f"'{raw_key}' is given twice (first on line {fields[name][1]})"
                    )
                fields[name] = (match.group(2).strip(), lineno(i))
                last_key = name
        else:
            if not fields:
                found.error(
                    lineno(i),
                    f"article '{title}' has no citation lines: right after its heading write "
                    "'Authors: …', 'Year: …', 'Title: …', 'Journal: …', 'DOI: …' and 'Topics: …'",
                )
            else:
                found.error(
                    lineno(i),
                    "expected a 'Field: value' citation line, or a blank line before the summary",
                )
            break
        i += 1
    summary_start = i

    for name in REQUIRED_CITATION:
        if name not in fields and fields:
            found.error(
                head_line, f"article '{title}': the citation has no '{name.capitalize()}:' line"
            )
    citation = _citation(fields, head_line, title, found)
    topics = _topics(fields.get("topics"), taxonomy, found)

    practice = [
        h for h in subheads if h[0] == 2 and h[2].casefold().rstrip(":") == PRACTICE_HEADING
    ]
    if not practice:
        found.error(
            head_line,
            f"article '{title}' has no '## Practice Implications' section; every article needs one",
        )
        summary, implications = "\n".join(body[summary_start:end]).strip(), ""
    else:
        if len(practice) > 1:
            found.error(
                lineno(practice[1][1]), "a second 'Practice Implications' section in one article"
            )
        pi_index = practice[0][1]
        summary = "\n".join(body[summary_start:pi_index]).strip()
        implications = "\n".join(body[pi_index + 1 : end]).strip()
        if not implications:
            found.error(lineno(pi_index), "the Practice Implications section is empty")
    if not summary and fields:
        found.error(head_line, f"article '{title}' has no summary before its Practice Implications")

    if len(found.errors) > errors_before or citation is None:
        return None
    return Article(
        title=title,
        citation=citation,
        topics=topics,
        summary=summary,
        practice_implications=implications,
        research_type=fields.get("research_type", ("", 0))[0],
        line=head_line,
    )


def _citation(
    fields: dict[str, tuple[str, int]], head_line: int, title: str, found: _Collector
) -> Citation | None:
    if not fields:
        return None
    ok = True
    authors: tuple[str, ...] = ()
    if "authors" in fields:
        authors = tuple(a.strip() for a in fields["authors"][0].split(";") if a.strip())
        if not authors:
            found.error(fields["authors"][1], "Authors is empty; separate authors with ';'")
            ok = False
    year = 0
    if "year" in fields:
        text, line = fields["year"]
        this_year = _dt.date.today().year
        if not re.fullmatch(r"\d{4}", text) or not 1900 <= int(text) <= this_year + 1:
            found.error(line, f"Year must be a four-digit year up to {this_year + 1}, not {text!r}")
            ok = False
        else:
            year = int(text)
    doi = ""
    if "doi" in fields:
        text, line = fields["doi"]
        doi = bare_doi(text)
        if not DOI.match(doi):
            found.error(
                line,
                f"DOI {text!r} is not a DOI such as 10.1037/pst0000185"
                + (" (remove the punctuation at its end)" if text[-1:] in ".,;:" else ""),
            )
            ok = False
    url = ""
    if "url" in fields:
        text, line = fields["url"]
        if not re.match(r"^https?://\S+$", text):
            found.error(line, f"URL {text!r} must start with https:// or http://")
            ok = False
        url = text
    if "doi" not in fields and "url" not in fields:
        found.error(head_line, f"article '{title}': the citation needs a 'DOI:' or a 'URL:' line")
        ok = False
    online_first = False
    if "online_first" in fields:
        text, line = fields["online_first"]
        if text.casefold() in _YES:
            online_first = True
        elif text.casefold() not in _NO:
            found.error(line, f"Online first must be 'yes' or 'no', not {text!r}")
            ok = False
        if online_first and "volume" in fields:
            found.warning(
                line,
                "the citation has both 'Online first: yes' and a Volume; once an article has a "
                "volume it is no longer an advance online publication: remove one of them",
            )
    for name in ("title", "journal"):
        if name in fields and not fields[name][0]:
            found.error(fields[name][1], f"{name.capitalize()} is empty")
            ok = False
    if not ok or any(n not in fields for n in REQUIRED_CITATION):
        return None
    return Citation(
        authors=authors,
        year=year,
        title=fields["title"][0],
        journal=fields["journal"][0],
        volume=fields.get("volume", ("", 0))[0],
        pages=fields.get("pages", ("", 0))[0],
        doi=doi,
        url=url,
        online_first=online_first,
    )


def _topics(
    entry: tuple[str, int] | None, taxonomy: Taxonomy, found: _Collector
) -> tuple[str, ...]:
    if entry is None:
        return ()
    text, line = entry
    names = [t.strip() for t in text.split(";") if t.strip()]
    if not names:
        found.error(line, "Topics is empty; name one or more topics, separated by ';'")
    topics: list[str] = []
    for name in names:
        canonical = taxonomy.canonical(name)
        listed = taxonomy.split_by_commas(name) if canonical is None else None
        if listed:
            found.error(
                line,
                f"unknown topic '{name}': topics are separated by ';', not ','; "
                f"write 'Topics: {'; '.join(listed)}'",
            )
        elif canonical is None and "," in name:
            guesses = [
                taxonomy.canonical(part) or taxonomy.suggest(part) for part in name.split(",")
            ]
            hint = (
                f"; did you mean 'Topics: {'; '.join(g for g in guesses if g)}'?"
                if all(guesses)
                else ""
            )
            found.error(
                line,
                f"unknown topic '{name}': topics are separated by ';', not ','{hint}",
            )
        elif canonical is None:
            suggestion = taxonomy.suggest(name)
            hint = f"; did you mean '{suggestion}'?" if suggestion else ""
            found.error(
                line, f"unknown topic '{name}'{hint} (the taxonomy lists the allowed names)"
            )
        elif canonical not in topics:
            topics.append(canonical)
    return tuple(topics)


def bare_doi(text: str) -> str:
    """A DOI as an author may paste it (bare, ``doi:…``, a doi.org address), made bare."""
    doi = text.strip()
    for prefix in _DOI_PREFIXES:
        if doi.lower().startswith(prefix):
            doi = doi[len(prefix) :].strip()
    return doi


def _did_you_mean(word: str, choices: set[str] | dict[str, str]) -> str:
    close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
