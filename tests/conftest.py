from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from newsletter.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
SAMPLE_ISSUES = sorted((REPO / "issues").glob("*.md"))

VALID_ISSUE = """\
---
month: 2026-10
title: October 2026
subject: Ruptures, feedback and dropout
preheader: Three studies for the consulting room.
---
Dear [[name]], this month I write about ruptures in the alliance.

# Repairing ruptures helps
Authors: Eubanks, C. F.; Muran, J. C.; Safran, J. D.
Year: 2018
Title: Alliance rupture repair: A meta-analysis
Journal: Psychotherapy
Volume: 55(4)
Pages: 508–519
DOI: 10.1037/pst0000185
Topics: Alliance and Therapeutic Relationship; Common Factors
Research type: Meta-analysis

Repair was associated with outcome, r = .29 (β = −.31, R² = .13).

## Practice Implications
Notice ruptures and *talk* about them.

# Feedback reduces deterioration
Authors: Lambert, M. J.; Whipple, J. L.; Kleinstäuber, M.
Year: 2018
Title: Collecting and delivering progress feedback: A meta-analysis of routine outcome monitoring
Journal: Psychotherapy
Volume: 55(4)
Pages: 520–537
DOI: https://doi.org/10.1037/pst0000167
Topics: Feedback and Progress Monitoring

Clients whose therapists got feedback did better, d = 0.28.

## Practice Implications
- Measure every session.
- Look at the not-on-track alerts.
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The embedded defaults, rooted in a temporary folder."""
    return load_settings(None, root=tmp_path)


@pytest.fixture
def write_issue(tmp_path: Path) -> Callable[..., Path]:
    def write(
        text: str = VALID_ISSUE, name: str = "2026-10.md", *, raw: bytes | None = None
    ) -> Path:
        path = tmp_path / "issues" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if raw is not None:
            path.write_bytes(raw)
        else:
            path.write_text(textwrap.dedent(text), "utf-8")
        return path

    return write
