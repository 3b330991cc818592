"""Rewrite tests/golden/ from the sample issues: `make goldens`, after an intended change.

Review the diff (`git diff tests/golden`) before committing: it is the change subscribers see.
"""

from __future__ import annotations

from pathlib import Path

from newsletter.parse import parse_issue
from newsletter.render import render_issue
from newsletter.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden"


def render_samples() -> dict[Path, str]:
    """Relative golden path -> expected content, for every sample issue."""
    settings = load_settings(REPO / "newsletter.toml")
    out: dict[Path, str] = {}
    for path in sorted((REPO / "issues").glob("*.md")):
        rendered = render_issue(parse_issue(path, settings.taxonomy), settings)
        out[Path(path.stem) / "email.html"] = rendered.html
        out[Path(path.stem) / "email.txt"] = rendered.text
    return out


def main() -> None:
    for relative, content in render_samples().items():
        target = GOLDEN / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, "utf-8", newline="")
        print(f"wrote {target.relative_to(REPO)}")


if __name__ == "__main__":
    main()
