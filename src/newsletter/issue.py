"""The content model of an issue: what the parser produces and every later stage reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from newsletter.taxonomy import slugify

# How an author writes the APA 7 ellipsis of a 21+ author list, and "et al.".
ELLIPSES = frozenset({"…", "...", ". . ."})
ET_AL = frozenset({"et al.", "et al", "et. al."})
NBSP = "\u00a0"
ADVANCE_ONLINE = "Advance online publication"


@dataclass(frozen=True)
class Citation:
    authors: tuple[str, ...]
    year: int
    title: str
    journal: str
    volume: str = ""
    pages: str = ""
    doi: str = ""
    url: str = ""
    online_first: bool = False  # APA: "Advance online publication", no volume or pages yet

    @property
    def link(self) -> str:
        """Where the article can be read: the DOI resolver when there is a DOI."""
        return f"https://doi.org/{self.doi}" if self.doi else self.url

    @property
    def author_list(self) -> str:
        """Authors as an APA 7 reference list writes them.

        "A, B, & C"; an author list cut with an ellipsis (21 or more authors) is
        "A, B, . . . Z" with no ampersand; a list ending in "et al." is "A, B, et al.".
        """
        return self._authors(" ")

    @property
    def author_list_unbroken(self) -> str:
        """``author_list`` with no-break spaces inside each name, so that a line never breaks
        between "Rubel, J." and "A."."""
        return self._authors(NBSP)

    def _authors(self, space: str) -> str:
        names = [space.join(a.split()) for a in self.authors]
        plain = [" ".join(a.split()) for a in self.authors]
        if plain and plain[-1].casefold() in ET_AL:
            return ", ".join([*names[:-1], "et al."]) if len(names) > 1 else names[0]
        cut = [i for i, n in enumerate(plain) if n in ELLIPSES]
        if cut and 0 < cut[0] < len(names) - 1:
            return ", ".join(names[: cut[0]]) + ", . . . " + ", ".join(names[cut[0] + 1 :])
        if len(names) == 1:
            return names[0]
        if len(names) == 2:
            return f"{names[0]}, & {names[1]}"
        return ", ".join(names[:-1]) + f", & {names[-1]}"

    @property
    def title_end(self) -> str:
        """The period after the title, unless the title ends in its own "?", "!" or "."."""
        return "" if self.title[-1:] in ".?!" else "."

    @property
    def source(self) -> str:
        """Journal, volume and pages: "Psychotherapy, 55(4), 508–519"."""
        return ", ".join(part for part in (self.journal, self.volume, self.pages) if part)

    @property
    def status(self) -> str:
        """What follows the source: "Advance online publication" for an online-first article."""
        return ADVANCE_ONLINE if self.online_first else ""

    def formatted(self, *, unbroken: bool = False) -> str:
        """The whole reference in one line, in the style of APA (``unbroken``: names joined
        by no-break spaces, for wrapping)."""
        authors = self.author_list_unbroken if unbroken else self.author_list
        status = f" {self.status}." if self.status else ""
        return f"{authors} ({self.year}). {self.title}{self.title_end} {self.source}.{status}"


@dataclass(frozen=True)
class Article:
    title: str
    citation: Citation
    topics: tuple[str, ...]
    summary: str  # Markdown
    practice_implications: str  # Markdown
    research_type: str = ""
    line: int = 0  # of the article's heading in the issue file

    @property
    def slug(self) -> str:
        return slugify(self.title)[:60].strip("-")


# The label of the welcome email where an issue has its month (its "issue" in the journal).
WELCOME = "welcome"


@dataclass(frozen=True)
class Issue:
    path: Path
    month: str  # YYYY-MM
    title: str
    subject: str
    intro: str  # Markdown: the teaser
    articles: tuple[Article, ...]
    preheader: str = ""

    @property
    def is_welcome(self) -> bool:
        return self.month == WELCOME

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic of the issue's articles, in first-use order."""
        seen: dict[str, None] = {}
        for article in self.articles:
            seen.update(dict.fromkeys(article.topics))
        return tuple(seen)
