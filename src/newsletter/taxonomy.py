"""The fixed list of topics an article may be tagged with."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class Taxonomy:
    topics: tuple[str, ...]

    @classmethod
    def default(cls) -> Taxonomy:
        text = resources.files("newsletter").joinpath("data/topics.txt").read_text("utf-8")
        return cls.from_lines(text.splitlines())

    @classmethod
    def from_file(cls, path: Path) -> Taxonomy:
        return cls.from_lines(path.read_text("utf-8").splitlines())

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> Taxonomy:
        topics = [line.strip() for line in lines]
        return cls(tuple(t for t in topics if t and not t.startswith("#")))

    def __contains__(self, name: object) -> bool:
        return name in self.topics

    def canonical(self, name: str) -> str | None:
        """The taxonomy's spelling of ``name`` (case and spacing forgiven), or None."""
        wanted = " ".join(name.split()).casefold()
        for topic in self.topics:
            if topic.casefold() == wanted:
                return topic
        return None

    def suggest(self, name: str) -> str | None:
        """The closest topic to a misspelt ``name``, for a did-you-mean."""
        lowered = {t.casefold(): t for t in self.topics}
        close = difflib.get_close_matches(name.casefold(), list(lowered), n=1, cutoff=0.6)
        if close:
            return lowered[close[0]]
        # A prefix often names the topic well enough ("Trauma" for "Trauma and/or PTSD").
        for key, topic in lowered.items():
            if key.startswith(name.casefold()) and len(name) >= 4:
                return topic
        return None


def slugify(text: str) -> str:
    """A URL-safe, lower-case name: "Trauma and/or PTSD" -> "trauma-and-or-ptsd"."""
    out: list[str] = []
    for char in text.casefold():
        if char.isascii() and char.isalnum():
            out.append(char)
        elif out and out[-1] != "-":
            out.append("-")
    return "".join(out).strip("-")
