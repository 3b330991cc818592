"""The plain-text part, written from the Issue's Markdown (never scraped from the HTML).

Links become numbered references ("the trial [2]") listed at the end of the email, so the
text stays readable at the line width while every address remains usable.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence

from markdown_it import MarkdownIt
from markdown_it.token import Token

from newsletter.issue import NBSP

WIDTH = 72
# textwrap breaks lines at ASCII whitespace only; so do we, keeping no-break spaces.
_ASCII_SPACE = re.compile(r"[ \t\n\r\f\v]+")
# Smart quotes only: the "replacements" rule would turn the (a), (b), (c) of research prose
# into "©" (and (r), (tm), "--", "..." likewise); the author's own dashes and quotes stay.
_markdown = MarkdownIt("commonmark", {"html": False, "typographer": True}).enable("smartquotes")


class TextRenderer:
    """Renders Markdown blocks to wrapped text, collecting links across one email."""

    def __init__(self, width: int = WIDTH):
        self.width = width
        self.links: list[str] = []

    def link_number(self, url: str) -> int:
        if url not in self.links:
            self.links.append(url)
        return self.links.index(url) + 1

    def wrap(self, text: str, indent: str = "", first: str | None = None) -> str:
        """Fill ``text`` to the width; long words (URLs) are never broken, nor are words
        joined by no-break spaces (an author's name), which come out as plain spaces."""
        filled = textwrap.fill(
            " ".join(_ASCII_SPACE.split(text.strip())),
            width=self.width,
            initial_indent=indent if first is None else first,
            subsequent_indent=indent,
            break_long_words=False,
            break_on_hyphens=False,
        )
        return filled.replace(NBSP, " ")

    def heading(self, text: str) -> str:
        wrapped = self.wrap(text.upper())
        longest = max(len(line) for line in wrapped.splitlines())
        return f"{wrapped}\n{'=' * longest}"

    def markdown(self, source: str, indent: str = "") -> str:
        tokens = _markdown.parse(source)
        blocks = self._blocks(tokens, 0, len(tokens), indent)
        return "\n\n".join(blocks)

    # Block tokens come as open/close pairs; walk them and render each paragraph-like block.
    def _blocks(self, tokens: Sequence[Token], start: int, stop: int, indent: str) -> list[str]:
        blocks: list[str] = []
        i = start
        while i < stop:
            token = tokens[i]
            if token.type == "paragraph_open":
                blocks.append(self.wrap(self._inline(tokens[i + 1]), indent))
                i += 3
            elif token.type == "heading_open":
                blocks.append(self.wrap(self._inline(tokens[i + 1]).upper(), indent))
                i += 3
            elif token.type in ("bullet_list_open", "ordered_list_open"):
                close = self._matching(tokens, i)
                blocks.append(self._list(tokens, i, close, indent))
                i = close + 1
            elif token.type == "blockquote_open":
                close = self._matching(tokens, i)
                inner = self._blocks(tokens, i + 1, close, indent + "> ")
                blocks.append("\n".join(inner))
                i = close + 1
            elif token.type in ("fence", "code_block"):
                code = token.content.rstrip("\n")
                blocks.append("\n".join(indent + "    " + line for line in code.split("\n")))
                i += 1
            elif token.type == "hr":
                blocks.append(indent + "-" * 20)
                i += 1
            else:
                i += 1
        return blocks

    def _list(self, tokens: Sequence[Token], start: int, stop: int, indent: str) -> str:
        ordered = tokens[start].type == "ordered_list_open"
        number = int(tokens[start].attrGet("start") or 1)
        items: list[str] = []
        i = start + 1
        while i < stop:
            if tokens[i].type == "list_item_open":
                close = self._matching(tokens, i)
                marker = f"{number}. " if ordered else "- "
                inner = self._blocks(tokens, i + 1, close, indent + " " * len(marker))
                text = "\n".join(inner)
                # The first line carries the marker in place of the hanging indent.
                items.append(indent + marker + text[len(indent) + len(marker) :])
                number += 1
                i = close + 1
            else:
                i += 1
        return "\n".join(items)

    @staticmethod
    def _matching(tokens: Sequence[Token], start: int) -> int:
        level = tokens[start].level
        closing = tokens[start].type.replace("_open", "_close")
        for j in range(start + 1, len(tokens)):
            if tokens[j].type == closing and tokens[j].level == level:
                return j
        return len(tokens) - 1

    def _inline(self, token: Token) -> str:
        out: list[str] = []
        href: list[str] = []
        for child in token.children or []:
            kind = child.type
            if kind in ("text", "code_inline"):
                out.append(child.content)
            elif kind in ("softbreak", "hardbreak"):
                out.append(" ")
            elif kind == "link_open":
                href.append(str(child.attrGet("href") or ""))
            elif kind == "link_close":
                url = href.pop() if href else ""
                if url and not url.startswith("mailto:"):
                    out.append(f" [{self.link_number(url)}]")
            elif kind == "image":
                alt = child.content or "image"
                out.append(f"[image: {alt}]")
            elif kind in ("em_open", "em_close"):
                out.append("_")
            elif kind in ("strong_open", "strong_close"):
                out.append("*")
        return "".join(out)
