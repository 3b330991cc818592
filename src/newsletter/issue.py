"""The content model of an issue: what the parser produces and every later stage reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from newsletter.taxonomy import slugify


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

    @property
    def link(self) -> str:
        """Where the article can be read: the DOI resolver when there is a DOI."""
        return f"https://doi.org/{self.doi}" if self.doi else self.url

    @property
    def author_list(self) -> str:
        """Authors as a reference list writes them: "A, B, & C"."""
        if len(self.authors) == 1:
            return self.authors[0]
        if len(self.authors) == 2:
            return f"{self.authors[0]}, & {self.authors[1]}"
        return ", ".join(self.authors[:-1]) + f", & {self.authors[-1]}"

    @property
    def source(self) -> str:
        """Journal, volume and pages: "Psychotherapy, 55(4), 508–519"."""
        return ", ".join(part for part in (self.journal, self.volume, self.pages) if part)

    def formatted(self) -> str:
        """The whole reference in one line, in the style of APA."""
        title = self.title if self.title[-1:] in ".?!" else f"{self.title}."
        return f"{self.author_list} ({self.year}). {title} {self.source}."


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
    def topics(self) -> tuple[str, ...]:
        """Every topic of the issue's articles, in first-use order."""
        seen: dict[str, None] = {}
        for article in self.articles:
            seen.update(dict.fromkeys(article.topics))
        return tuple(seen)
