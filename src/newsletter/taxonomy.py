"""The fixed list of topics an article may be tagged with."""

from __future__ import annotations

import difflib
import re
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
        """The topic ``name`` most likely means, for a did-you-mean: one it abbreviates
        ("PTSD", "CBT"), then the most words in common ("depressive symptoms"), then the
        closest spelling ("Empthy"), then one it starts ("Trauma")."""
        wanted = name.casefold().strip()
        for topic in self.topics:
            if wanted in _abbreviations(topic):
                return topic
        by_words = self._by_words(wanted)
        if by_words:
            return by_words
        lowered = {t.casefold(): t for t in self.topics}
        close = difflib.get_close_matches(wanted, list(lowered), n=1, cutoff=0.6)
        if close:
            return lowered[close[0]]
        # A prefix often names the topic well enough ("Trauma" for "Trauma and/or PTSD").
        for key, topic in lowered.items():
            if key.startswith(wanted) and len(wanted) >= 4:
                return topic
        return None

    def _by_words(self, wanted: str) -> str | None:
        words = _stems(wanted)
        if not words:
            return None
        scored = [(len(words & _stems(topic)), -len(topic), topic) for topic in self.topics]
        best = max(scored)
        return best[2] if best[0] > 0 else None

    def split_by_commas(self, name: str) -> tuple[str, ...] | None:
        """The topics a comma-separated ``name`` lists ("Empathy, Training"), when every part
        is one (topic names with commas of their own are kept whole), or None."""
        parts = [p.strip() for p in name.split(",")]
        if len(parts) < 2:
            return None
        # best[i]: a split of parts[:i] into known topics, fewest topics first.
        best: dict[int, tuple[str, ...]] = {0: ()}
        for end in range(1, len(parts) + 1):
            for start in range(end):
                if start in best:
                    topic = self.canonical(", ".join(parts[start:end]))
                    if topic is not None and end not in best:
                        best[end] = (*best[start], topic)
        found = best.get(len(parts))
        return found if found and len(found) > 1 else None


_STOP_WORDS = {"and", "or", "of", "the", "in", "for", "with", "a", "an", "to"}


def _stems(text: str) -> set[str]:
    """Content words, cut to their first five letters ("depressive" ~ "depression")."""
    words = re.findall(r"[a-z0-9]+", text.casefold())
    return {w[:5] for w in words if len(w) >= 3 and w not in _STOP_WORDS}


def _abbreviations(topic: str) -> set[str]:
    """What an author may write for ``topic``: its bracketed or capitalised abbreviations
    ("CBT", "PTSD") and the initials of its words ("IPT" for Interpersonal Psychotherapy)."""
    found = {a.casefold() for a in re.findall(r"\(([A-Z]{2,})\)", topic)}
    found |= {w.casefold() for w in re.findall(r"\b[A-Z]{2,}\b", topic)}
    words = [w for w in re.split(r"[^A-Za-z]+", re.sub(r"\([^)]*\)", "", topic)) if w]
    content = [w for w in words if w.casefold() not in _STOP_WORDS]
    if len(content) >= 2:
        found.add("".join(w[0] for w in content).casefold())
    return found


def slugify(text: str) -> str:
    """A URL-safe, lower-case name: "Trauma and/or PTSD" -> "trauma-and-or-ptsd"."""
    out: list[str] = []
    for char in text.casefold():
        if char.isascii() and char.isalnum():
            out.append(char)
        elif out and out[-1] != "-":
            out.append("-")
    return "".join(out).strip("-")
