"""Moving the CSS into style attributes, for mail clients that ignore <style> blocks.

premailer's defaults would break MJML's output: they strip ``!important`` (which the
responsive and dark-mode @media rules need to beat inline styles), may fetch external
stylesheets, print cssutils warnings for CSS it does not know (``mso-*``), and drop the
doctype. Each setting below undoes one of those.
"""

from __future__ import annotations

import logging

import premailer

DOCTYPE = "<!doctype html>"


def inline_css(html: str) -> str:
    """Inline the document's CSS, keeping @media rules in a <style> block with !important."""
    inliner = premailer.Premailer(
        html,
        strip_important=False,
        allow_network=False,
        allow_loading_external_files=False,
        keep_style_tags=False,
        remove_classes=False,  # the @media rules select by class
        disable_validation=True,
        cssutils_logging_level=logging.CRITICAL,
        disable_leftover_css=False,
        cache_css_parsing=True,
    )
    inlined: str = inliner.transform(pretty_print=False)
    if not inlined.lower().startswith("<!doctype"):
        inlined = f"{DOCTYPE}\n{inlined}"
    return inlined
