"""Moving the CSS into style attributes, for mail clients that ignore <style> blocks.

premailer's defaults would break MJML's output: they strip ``!important`` (which the
responsive and dark-mode @media rules need to beat inline styles), may fetch external
stylesheets, print cssutils warnings for CSS it does not know (``mso-*``), and drop the
doctype. Each setting below undoes one of those.

The @media rules, other at-rules and pseudo-class rules cannot be inlined anyway, so they are set aside before premailer
runs, in ``<style data-premailer="ignore">`` blocks that it leaves as they are. That keeps
their text byte for byte, and spares premailer re-serialising them through cssutils, which was
the larger part of its time.
"""

from __future__ import annotations

import logging
import re

import premailer

DOCTYPE = "<!doctype html>"
_STYLE_BLOCK = re.compile(r"<style([^>]*)>(.*?)</style>", re.S | re.I)
_COMMENT = re.compile(r"/\*.*?\*/", re.S)


def split_at_rules(css: str) -> tuple[str, str]:
    """Split a stylesheet into (rules to inline, rules to keep), each in its original order.

    Kept are at-rules and rules with pseudo-classes (``:root``, ``a:hover``), which no style
    attribute can express.
    """
    css = _COMMENT.sub("", css)
    plain: list[str] = []
    at_rules: list[str] = []
    i, n = 0, len(css)
    while i < n:
        start = i
        # A statement ends at ';' (before any '{') or at the '}' closing its outermost block.
        depth = 0
        while i < n:
            char = css[i]
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth <= 0:
                    i += 1
                    break
            elif char == ";" and depth == 0:
                i += 1
                break
            i += 1
        statement = css[start:i].strip()
        if statement:
            selector = statement.split("{", 1)[0]
            keep = statement.startswith("@") or ":" in selector
            (at_rules if keep else plain).append(statement)
    return "\n".join(plain), "\n".join(at_rules)


def _set_aside_at_rules(html: str) -> str:
    def replace(match: re.Match[str]) -> str:
        attributes, css = match.group(1), match.group(2)
        if "data-premailer" in attributes or "media=" in attributes.lower():
            return match.group(0)
        plain, at_rules = split_at_rules(css)
        out = f"<style{attributes}>{plain}</style>" if plain else ""
        if at_rules:
            out += f'<style type="text/css" data-premailer="ignore">\n{at_rules}\n</style>'
        return out

    # Conditional comments (<!--[if mso]>…) hold styles for Outlook only: leave them alone.
    parts = re.split(r"(<!--.*?-->)", html, flags=re.S)
    return "".join(p if p.startswith("<!--") else _STYLE_BLOCK.sub(replace, p) for p in parts)


def inline_css(html: str) -> str:
    """Inline the document's CSS, keeping @media rules in a <style> block with !important."""
    inliner = premailer.Premailer(
        _set_aside_at_rules(html),
        strip_important=False,
        allow_network=False,
        allow_loading_external_files=False,
        keep_style_tags=False,
        remove_classes=False,  # the @media rules select by class
        disable_validation=True,
        cssutils_logging_level=logging.CRITICAL,
        cache_css_parsing=True,
    )
    inlined: str = inliner.transform(pretty_print=False)
    if not inlined.lower().startswith("<!doctype"):
        inlined = f"{DOCTYPE}\n{inlined}"
    return inlined
