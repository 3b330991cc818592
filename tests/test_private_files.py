"""Files of personal data or secrets are owner-only: the store, the outbox, the signing secret."""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter import store
from newsletter.cli import main
from newsletter.errors import TokenError
from newsletter.tokens import Signer

from .conftest import write_settings
from .sending_helpers import make_folder

OUTBOX = '[provider]\nname = "outbox"\n'


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The common default, under which a plain open() makes files everyone can read."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_store_and_its_wal_and_shm_files_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "newsletter.db"
    with closing(store.open_store(path)) as conn:
        store.add_subscriber(conn, "reader@example.net")
        files = {p.name: mode(p) for p in tmp_path.glob("newsletter.db*")}
    assert set(files) >= {"newsletter.db", "newsletter.db-wal", "newsletter.db-shm"}
    assert files == dict.fromkeys(files, 0o600)


@pytest.mark.parametrize("dry_run", [False, True], ids=["send", "dry-run"])
def test_outbox_messages_and_index_are_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dry_run: bool
) -> None:
    settings, issue = make_folder(tmp_path, OUTBOX, 3)
    monkeypatch.chdir(tmp_path)
    args = ["send", "--dry-run" if dry_run else "--yes", str(issue)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    written = [p for p in (settings.paths.build / "outbox").rglob("*") if p.is_file()]
    assert len([p for p in written if p.suffix == ".eml"]) == 3
    assert any(p.name == "index.html" for p in written)
    assert {p.name: oct(mode(p)) for p in written} == {p.name: "0o600" for p in written}
    folders = [p for p in (settings.paths.build / "outbox").rglob("*") if p.is_dir()]
    assert folders and {oct(mode(p)) for p in folders} == {"0o700"}


def test_the_command_the_missing_secret_error_suggests_writes_it_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET", raising=False)
    settings = write_settings(tmp_path)
    with pytest.raises(TokenError) as caught:
        Signer.for_settings(settings)
    commands = re.findall(r"`([^`]+)`", str(caught.value))
    suggested = [c for c in commands if ".newsletter-secret" in c]
    assert len(suggested) == 1, str(caught.value)
    subprocess.run(["sh", "-c", suggested[0]], cwd=tmp_path, check=True)
    secret = tmp_path / ".newsletter-secret"
    assert mode(secret) == 0o600
    assert Signer.for_settings(settings)  # and it is a usable secret


def test_init_writes_the_secret_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["init", "digest"])
    assert result.exit_code == 0, result.output
    assert mode(tmp_path / "digest" / ".newsletter-secret") == 0o600


def test_a_secret_others_can_read_is_used_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET", raising=False)
    settings, issue = make_folder(tmp_path, OUTBOX, 1)
    secret = tmp_path / ".newsletter-secret"
    secret.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="newsletter"):
        Signer.for_settings(settings)
    assert [r.getMessage() for r in caplog.records if "chmod 600" in r.getMessage()]

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["send", "--dry-run", str(issue)])
    assert result.exit_code == 0, result.output
    assert f"Warning: the signing secret {secret} can be read" in result.output
    assert "(permissions 0644)" in result.output

    secret.chmod(0o600)
    quiet = CliRunner().invoke(main, ["send", "--dry-run", str(issue)])
    assert quiet.exit_code == 0 and "Warning" not in quiet.output
