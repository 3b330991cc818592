"""Rewrite tests/golden/ from the sample issues and the cases in tests/cases/: `make goldens`,
after an intended change.

Review the diff (`git diff tests/golden`) before committing: it is the change subscribers see.
"""

from __future__ import annotations

from pathlib import Path

from newsletter.parse import parse_issue
from newsletter.render import render_issue
from newsletter.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden"
# Issue files that pin one rendering rule each (typography, citation edge cases); their
# goldens live in tests/golden/cases/<name>/.
CASES = REPO / "tests" / "cases"


def render_samples() -> dict[Path, str]:
    """Relative golden path -> expected content, for every sample issue and case."""
    settings = load_settings(REPO / "newsletter.toml")
    out: dict[Path, str] = {}
    sources = [(Path(p.stem), p) for p in sorted((REPO / "issues").glob("*.md"))]
    sources += [(Path("cases") / p.stem, p) for p in sorted(CASES.glob("*.md"))]
    for folder, path in sources:
        rendered = render_issue(parse_issue(path, settings.taxonomy), settings)
        out[folder / "email.html"] = rendered.html
        out[folder / "email.txt"] = rendered.text
    return out


def main() -> None:
    for relative, content in render_samples().items():
        target = GOLDEN / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, "utf-8", newline="")
        print(f"wrote {target.relative_to(REPO)}")


if __name__ == "__main__":
    main()
