"""Binary and huge CSV files: a short, escaped error at file:line, never a flood or a traceback."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli import main

from .conftest import write_settings

# What may appear in the report besides printable text: its own line ends.
_RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_settings(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def junk(length: int, alphabet: str = "abcdefghijklmnop@.xyz;!#") -> str:
    rng = random.Random(25)
    return "".join(rng.choice(alphabet) for _ in range(length))


def import_(path: Path, *options: str) -> str:
    result = CliRunner().invoke(main, ["subscribers", "import", *options, str(path)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.output.startswith("Error: ")
    return result.output


def test_a_binary_file_read_as_latin_1_gives_a_short_escaped_excerpt(folder: Path) -> None:
    path = folder / "photo.csv"
    # No line end in it, as in many binary files: all 25 KB are the "header".
    path.write_bytes(random.Random(7).randbytes(25_000).translate(None, b"\r\n"))
    output = import_(path, "--encoding", "latin-1")
    assert "characters)" in output
    assert len(output) < 700
    assert f"{path}:1: the header has no 'email' column" in output
    assert not _RAW_CONTROL.search(output)


def test_a_binary_file_as_utf_8_is_refused_at_its_line(folder: Path) -> None:
    path = folder / "photo.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + random.Random(7).randbytes(25_000))
    output = import_(path)
    assert len(output) < 700 and "not utf-8-sig text" in output


def test_huge_cells_are_quoted_short(folder: Path) -> None:
    cell = junk(25_000)
    path = folder / "list.csv"
    path.write_text(f"email,name\n{cell},{cell}\nana@example.org,Ana\n", "utf-8")
    output = import_(path)
    assert len(output) < 1_000, output[:300]
    assert f"{path}:2: " in output and "(25,000 characters)" in output


def test_a_huge_header_is_quoted_short(folder: Path) -> None:
    path = folder / "list.csv"
    path.write_text(",".join(junk(5_000) for _ in range(20)) + "\nx\n", "utf-8")
    output = import_(path)
    assert len(output) < 700 and "and 15 more" in output


def test_a_huge_ignored_column_is_named_short(folder: Path) -> None:
    path = folder / "list.csv"
    path.write_text(f"email,{junk(25_000)}\nana@example.org,x\n", "utf-8")
    result = CliRunner().invoke(main, ["subscribers", "import", str(path)])
    assert result.exit_code == 0, result.output
    assert "Ignored columns: " in result.output and len(result.output) < 700


def test_nul_characters_are_refused_at_their_line(folder: Path) -> None:
    path = folder / "list.csv"
    path.write_bytes(b"email,name\nana@example.org,Ana" + b"\x00" * 25_000 + b"\n")
    output = import_(path)
    assert len(output) < 700 and f"{path}:2: contains NUL characters" in output
