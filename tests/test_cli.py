from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from newsletter.cli import main

from .conftest import REPO, SAMPLE_ISSUES, VALID_ISSUE


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[CliRunner]:
    # Commands look for newsletter.toml upwards from the working folder: start in an empty one.
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield CliRunner()
    finally:
        os.chdir(old)


def _walk(group: click.Group, prefix: str = "newsletter") -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from _walk(command, path)


ALL_COMMANDS = list(_walk(main))


@pytest.mark.parametrize(("path", "command"), ALL_COMMANDS, ids=[p for p, _ in ALL_COMMANDS])
def test_every_command_has_help_and_is_documented(path: str, command: click.Command) -> None:
    assert (command.help or "").strip(), f"{path} has no help text"
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{path} {param.opts[0]} has no help text"
    docs = (REPO / "docs" / "cli.md").read_text("utf-8")
    assert f"`{path}" in docs, f"{path} is not in docs/cli.md"


def test_check_passes_on_a_sample_offline(runner: CliRunner) -> None:
    result = runner.invoke(main, ["check", "--offline", str(SAMPLE_ISSUES[0])])
    assert result.exit_code == 0, result.output
    assert "OK (0 errors, 0 warnings" in result.output


def test_check_fails_with_path_and_line(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "2026-10.md"
    path.write_text(
        VALID_ISSUE.replace("Topics: Feedback and Progress Monitoring", "Topics: Empthy"), "utf-8"
    )
    result = runner.invoke(main, ["check", "--offline", str(path)])
    assert result.exit_code == 1
    assert f"{path}:33: unknown topic 'Empthy'; did you mean 'Empathy'?" in result.output
    assert f"Error: {path}: 1 error, 0 warnings" in result.output
    assert "Traceback" not in result.output


def test_preview_writes_html_and_text_and_prints_their_paths(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "2026-10.md"
    path.write_text(VALID_ISSUE, "utf-8")
    result = runner.invoke(main, ["preview", str(path)])
    assert result.exit_code == 0, result.output
    html = tmp_path / "build" / "2026-10" / "email.html"
    text = tmp_path / "build" / "2026-10" / "email.txt"
    assert f"HTML: {html}" in result.output and f"Text: {text}" in result.output
    assert "Dear Alex Sample," in html.read_text("utf-8")
    assert "alex.sample@example.com" in text.read_text("utf-8")


def test_preview_of_a_broken_file_lists_every_problem(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "2026-10.md"
    path.write_text(
        VALID_ISSUE.replace("month: 2026-10", "month: 2026/10").replace("Year: 2018", "Year: x", 1),
        "utf-8",
    )
    result = runner.invoke(main, ["preview", str(path)])
    assert result.exit_code == 1
    assert "Error: 2 problems in the issue file:" in result.output
    assert f"{path}:2: month must be YYYY-MM" in result.output
    assert f"{path}:11: Year must be a four-digit year" in result.output


def test_init_makes_a_folder_that_previews_at_once(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["init", "digest"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "digest"
    issues = list((folder / "issues").glob("*.md"))
    assert len(issues) == 1
    for name in ("newsletter.toml", "templates/README.md", "subscribers.example.csv", ".gitignore"):
        assert (folder / name).is_file(), name
    secret = folder / ".newsletter-secret"
    assert len(secret.read_text().strip()) >= 40 and (secret.stat().st_mode & 0o077) == 0

    os.chdir(folder)
    result = runner.invoke(main, ["preview", str(issues[0].relative_to(folder))])
    assert result.exit_code == 0, result.output
    assert (folder / "build" / issues[0].stem / "email.html").is_file()
    result = runner.invoke(main, ["check", "--offline", str(issues[0].relative_to(folder))])
    assert result.exit_code == 0, result.output

    again = runner.invoke(main, ["init", str(folder)])
    assert again.exit_code == 1 and "already exists" in again.output


def test_templates_lists_and_copies_a_partial(runner: CliRunner, tmp_path: Path) -> None:
    listing = runner.invoke(main, ["templates"])
    assert "_footer.mjml" in listing.output and "email.txt" in listing.output
    copied = runner.invoke(main, ["templates", "--copy", "_footer.mjml"])
    assert copied.exit_code == 0, copied.output
    assert "[[unsubscribe_url]]" in (tmp_path / "templates" / "_footer.mjml").read_text("utf-8")
    assert "overridden" in runner.invoke(main, ["templates"]).output
    unknown = runner.invoke(main, ["templates", "--copy", "nope.mjml"])
    assert unknown.exit_code == 1 and "no packaged template 'nope.mjml'" in unknown.output


def test_a_broken_settings_file_is_an_error_without_traceback(
    runner: CliRunner, tmp_path: Path, write_issue: Callable[..., Path]
) -> None:
    (tmp_path / "newsletter.toml").write_text('[newsletter]\nbase_url = "nope"\n', "utf-8")
    result = runner.invoke(main, ["preview", str(write_issue())])
    assert result.exit_code == 1
    assert (
        "Error: " in result.output
        and "newsletter.toml: newsletter.base_url: must be an http(s) URL" in result.output
    )
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_screenshot_without_chromium_says_how_to_install_it(
    runner: CliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write_issue: Callable[..., Path],
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    result = runner.invoke(main, ["preview", "--screenshot", str(write_issue())])
    assert result.exit_code == 1
    assert (
        "needs headless Chromium" in result.output and "apt-get install chromium" in result.output
    )


def test_check_prints_every_problem_on_one_stream_in_file_order(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "2026-10.md"
    path.write_text(
        VALID_ISSUE.replace("subject: Ruptures, feedback and dropout", "subject: " + "x" * 95)
        .replace("DOI: 10.1037/pst0000185", "DOI: 10.1037/pst0000185.")
        .replace("Topics: Feedback and Progress Monitoring", "Topics: Empthy"),
        "utf-8",
    )
    result = runner.invoke(main, ["check", "--offline", str(path)])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{path}:4: warning: subject is 95 characters; many clients cut it near 60–90",
        f"{path}:16: DOI '10.1037/pst0000185.' is not a DOI such as 10.1037/pst0000185 "
        "(remove the punctuation at its end)",
        f"{path}:33: unknown topic 'Empthy'; did you mean 'Empathy'? "
        "(the taxonomy lists the allowed names)",
    ]
    assert result.stderr == f"Error: {path}: 2 errors, 1 warning\n"
