from __future__ import annotations

import csv
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from newsletter.cli import main
from newsletter.cli import subscribers as subscribers_cli

# The same tests on both stores (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("store_backend")

EXAMPLE = Path(__file__).resolve().parents[1] / "subscribers.example.csv"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "newsletter.toml").write_text('[paths]\ndatabase = "data/list.db"\n', "utf-8")
    return tmp_path


def run(folder: Path, *args: str, input: str | None = None) -> Result:
    runner = CliRunner()
    return runner.invoke(
        main,
        ["--config", str(folder / "newsletter.toml"), "subscribers", *args],
        input=input,
        catch_exceptions=False,
    )


def test_every_subscribers_command_has_help_and_a_readme_entry() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")
    group = subscribers_cli.subscribers
    assert isinstance(group, click.Group)
    for name, command in group.commands.items():
        assert command.help, name
        assert f"subscribers {name}" in readme, name


@pytest.mark.sqlite_file
def test_add_show_list_and_the_database_path_from_settings(folder: Path) -> None:
    result = run(folder, "add", "Ana@Example.org", "--name", "Ana Lima", "--topic", "empathy")
    assert result.exit_code == 0, result.output
    assert result.output == "Added Ana@example.org (active; topics: Empathy).\n"
    assert (folder / "data" / "list.db").is_file()
    shown = run(folder, "show", "ana@example.org").output
    assert "name:           Ana Lima" in shown
    assert "source:         command" in shown
    listed = run(folder, "list").output
    assert listed == "Ana@example.org\tactive\tAna Lima\tEmpathy\n"
    duplicate = run(folder, "add", "ANA@example.org")
    assert duplicate.exit_code == 1
    assert "already in the store" in duplicate.output


def test_add_refuses_an_unknown_topic_with_a_suggestion(folder: Path) -> None:
    result = run(folder, "add", "a@example.org", "--topic", "Empaty")
    assert result.exit_code == 1
    assert "Error: unknown topic 'Empaty'; did you mean 'Empathy'?" in result.output


def test_unsubscribe_then_import_as_active_keeps_it_and_says_so(folder: Path) -> None:
    run(folder, "add", "left@example.org")
    result = run(folder, "unsubscribe", "left@example.org", "--reason", "asked by phone")
    assert result.output == "Unsubscribed left@example.org (was active).\n"
    again = run(folder, "unsubscribe", "left@example.org")
    assert "already unsubscribed" in again.output
    assert "asked by phone" in again.output
    csv_file = folder / "back.csv"
    csv_file.write_text("email,status\nleft@example.org,active\n", "utf-8")
    report = run(folder, "import", str(csv_file))
    assert report.exit_code == 0
    assert "line 2: left@example.org stays unsubscribed (the file says active)" in report.output
    assert "\tunsubscribed\t" in run(folder, "list").output


def test_remove_asks_first(folder: Path) -> None:
    run(folder, "add", "a@example.org")
    declined = run(folder, "remove", "a@example.org", input="n\n")
    assert declined.exit_code == 1
    assert "Aborted" in declined.output
    assert "a@example.org" in run(folder, "list").output
    accepted = run(folder, "remove", "a@example.org", input="y\n")
    assert "Deleted a@example.org." in accepted.output
    assert run(folder, "list").output == ""
    run(folder, "add", "b@example.org")
    assert run(folder, "remove", "--yes", "b@example.org").output == "Deleted b@example.org.\n"
    missing = run(folder, "remove", "--yes", "b@example.org")
    assert missing.exit_code == 1
    assert "no subscriber" in missing.output


def test_import_twice_then_export_round_trips(folder: Path) -> None:
    first = run(folder, "import", str(EXAMPLE))
    assert first.exit_code == 0
    assert "20 added, 0 updated, 0 unchanged, 0 rejected" in first.output
    second = run(folder, "import", str(EXAMPLE))
    assert "0 added, 0 updated, 20 unchanged, 0 rejected" in second.output
    out = folder / "export.csv"
    exported = run(folder, "export", str(out))
    assert exported.output == f"Exported 20 subscribers to {out}.\n"
    assert out.read_bytes() == EXAMPLE.read_bytes()
    active = run(folder, "export", str(out), "--status", "active", "--status", "pending")
    assert "Exported 16 subscribers" in active.output


def test_export_has_no_cell_starting_with_equals(folder: Path) -> None:
    run(folder, "add", "x@example.org", "--name", '=HYPERLINK("http://evil.example","Click")')
    run(folder, "add", "=y@example.org", "--name", "@SUM(1+1)")
    out = folder / "export.csv"
    run(folder, "export", str(out))
    with out.open(encoding="utf-8", newline="") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    assert cells
    assert not [cell for cell in cells if cell.startswith(("=", "+", "-", "@"))]
    report = run(folder, "import", str(out))
    assert "0 added, 0 updated, 2 unchanged" in report.output


def test_dry_run_and_rejections(folder: Path) -> None:
    bad = folder / "bad.csv"
    bad.write_text("email,topics\nok@example.org,\nnope,\nfine@example.org,Nothing\n", "utf-8")
    refused = run(folder, "import", str(bad))
    assert refused.exit_code == 1
    assert "2 rows were rejected, so the import changed nothing" in refused.output
    assert "bad.csv:3: nope: invalid address" in refused.output
    assert "bad.csv:4: fine@example.org: unknown topic 'Nothing'" in refused.output
    dry = run(folder, "import", str(bad), "--dry-run", "--skip-invalid")
    assert "Would import bad.csv: 1 added, 0 updated, 0 unchanged, 2 rejected." in dry.output
    assert "Dry run: nothing was changed." in dry.output
    assert run(folder, "list").output == ""
    done = run(folder, "import", str(bad), "--skip-invalid")
    assert "line 3: nope: invalid address" in done.output
    assert run(folder, "list").output.startswith("ok@example.org\t")


def test_import_encoding_option(folder: Path) -> None:
    latin = folder / "latin.csv"
    latin.write_bytes("email,name\nz@example.org,Zoë\n".encode("cp1252"))
    refused = run(folder, "import", str(latin))
    assert "latin.csv:2: not utf-8-sig text (byte 0xeb)" in refused.output
    ok = run(folder, "import", str(latin), "--encoding", "cp1252")
    assert ok.exit_code == 0
    assert "\tZoë\t" in run(folder, "list").output


def test_list_filters_and_json(folder: Path) -> None:
    run(folder, "import", str(EXAMPLE))
    bounced = json.loads(run(folder, "list", "--status", "bounced", "--json").output)
    assert [s["email"] for s in bounced] == ["kenji.sato@example.jp"]
    assert bounced[0]["name"] == "佐藤 健二"
    everyone = json.loads(run(folder, "list", "--json").output)
    assert len(everyone) == 20
    trauma = run(folder, "list", "--topic", "trauma and/or ptsd", "--status", "pending").output
    assert trauma.splitlines() == [
        "nguyen.mai@example.com\tpending\tNguyễn Thị Mai\tTrauma and/or PTSD",
        "mehmet.yilmaz@example.com.tr\tpending\tMehmet Yılmaz\t",
    ]
    assert json.loads(run(folder, "list", "--json", "--status", "complained").output) != []
    assert json.loads(run(folder, "list", "--json", "--topic", "Training").output)


def test_stats(folder: Path) -> None:
    run(folder, "import", str(EXAMPLE))
    text = run(folder, "stats").output
    assert "Subscribers: 20" in text
    assert "  active              14" in text
    document = json.loads(run(folder, "stats", "--json").output)
    assert document["by_status"]["unsubscribed"] == 2
    assert document["by_topic"]["Empathy"] == 1
    assert document["all_topics"] == 3
    assert document["growth"][-1]["total"] == 20


def test_progress_shows_on_a_terminal_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    piped = CliRunner().invoke(
        main, ["--config", str(folder / "newsletter.toml"), "subscribers", "import", str(EXAMPLE)]
    )
    assert "Importing" not in piped.output
    monkeypatch.setattr(subscribers_cli, "_stderr_is_terminal", lambda: True)
    out = folder / "out.csv"
    on_terminal = CliRunner().invoke(
        main, ["--config", str(folder / "newsletter.toml"), "subscribers", "export", str(out)]
    )
    assert "Exporting to out.csv" in on_terminal.stderr
    assert "Exporting" not in on_terminal.stdout


@pytest.mark.sqlite_file
def test_a_store_that_is_not_a_database(folder: Path) -> None:
    (folder / "data").mkdir()
    (folder / "data" / "list.db").write_text("name,email\n", "utf-8")
    result = run(folder, "stats")
    assert result.exit_code == 1
    assert "is not a newsletter database" in result.output
    assert "Traceback" not in result.output
