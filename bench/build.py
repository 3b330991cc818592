"""How long one issue takes through each stage of the author's pipeline.

    .venv/bin/python bench/build.py [--repeat N]

Prints, per sample issue, the median over N warm runs of parse, render (Jinja2 + MJML),
inline (premailer), text, and the whole build, on one core. The ratio column compares each
stage with the whole build of the same issue in the same run. Target: total <= 20 ms.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jinja2

from newsletter.inline import inline_css
from newsletter.issue import Issue
from newsletter.parse import parse_issue
from newsletter.render import (
    RenderedIssue,
    mjml_to_html,
    render_issue,
    render_mjml,
    render_text,
    template_environment,
)
from newsletter.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent


def render_to_html(issue: Issue, settings: Settings, env: jinja2.Environment) -> str:
    return mjml_to_html(render_mjml(issue, settings, env))


def build_whole(path: Path, settings: Settings) -> RenderedIssue:
    return render_issue(parse_issue(path, settings.taxonomy), settings)


def median_ms(action: Callable[[], object], repeat: int) -> float:
    action()  # warm: template compilation, imports, caches
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the target says

    settings = load_settings(REPO / "newsletter.toml")
    env = template_environment(settings)
    print(f"{'issue':<12}{'stage':<10}{'median ms':>12}{'of total':>10}")
    totals = []
    for path in sorted((REPO / "issues").glob("*.md")):
        issue = parse_issue(path, settings.taxonomy)
        html = mjml_to_html(render_mjml(issue, settings, env))
        stages: dict[str, Callable[[], object]] = {
            "parse": functools.partial(parse_issue, path, settings.taxonomy),
            "render": functools.partial(render_to_html, issue, settings, env),
            "inline": functools.partial(inline_css, html),
            "text": functools.partial(render_text, issue, settings, env),
            "total": functools.partial(build_whole, path, settings),
        }
        results = {name: median_ms(action, args.repeat) for name, action in stages.items()}
        totals.append(results["total"])
        for name, value in results.items():
            print(f"{path.name:<12}{name:<10}{value:>12.2f}{value / results['total']:>9.0%}")
    worst = max(totals)
    verdict = "meets" if worst <= 20 else "MISSES"
    print(f"\nslowest total {worst:.2f} ms: {verdict} the 20 ms target")


if __name__ == "__main__":
    main()
