"""Commands that only read work on a store this user cannot write; the others say why not.

The tests run the command in a child process as a user without write access: as root (CI),
the child drops to ``nobody`` after importing everything, since root ignores permissions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from newsletter.send import SendOptions
from newsletter.store import Status, open_store, set_status

from .sending_helpers import make_folder, run_send

NOBODY = 65534
_AS_OTHER_USER = """
import os, sys
import newsletter.cli, newsletter.cli.author, newsletter.cli.sending, newsletter.cli.subscribers
import newsletter.cli.web, newsletter.status, newsletter.csvio, csv, json, encodings.idna
from newsletter.taxonomy import Taxonomy
# The package's own data too: a checkout in a folder only root may enter (mktemp -d, /root).
_topics = Taxonomy.default()
Taxonomy.default = classmethod(lambda cls: _topics)
if os.geteuid() == 0:
    os.setgid({uid}); os.setuid({uid})
sys.argv = ["newsletter", *sys.argv[1:]]
newsletter.cli.main()
"""


@pytest.fixture
def readonly_folder() -> Iterator[Path]:
    # Outside pytest's tmp_path, whose parents only root may enter.
    root = Path(tempfile.mkdtemp(prefix="newsletter-ro-"))
    try:
        settings, issue = make_folder(root, '[provider]\nname = "null"\n', 5)
        run_send(settings, issue, SendOptions())
        with closing(open_store(settings.paths.database)) as conn:
            set_status(conn, 2, Status.UNSUBSCRIBED)
        for folder, _dirs, files in os.walk(root):
            os.chmod(folder, 0o555)
            for name in files:
                os.chmod(Path(folder) / name, 0o444)
        yield root
    finally:
        for folder, _dirs, _files in os.walk(root):
            os.chmod(folder, 0o755)
        shutil.rmtree(root)


def run_as_reader(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEWSLETTER_SECRET": "a-test-secret-that-is-long-enough"}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            _AS_OTHER_USER.format(uid=NOBODY),
            "--config",
            str(folder / "newsletter.toml"),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_reading_commands_work_on_a_store_this_user_cannot_write(readonly_folder: Path) -> None:
    listed = run_as_reader(readonly_folder, "subscribers", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 5
    stats = run_as_reader(readonly_folder, "subscribers", "stats")
    assert stats.returncode == 0 and "unsubscribed" in stats.stdout, stats.stderr
    shown = run_as_reader(readonly_folder, "subscribers", "show", "reader2@example.net")
    assert shown.returncode == 0 and "unsubscribed" in shown.stdout, shown.stderr
    status = run_as_reader(readonly_folder, "status", "--json", "2026-10")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"]["sent"] == 5
    out = Path(tempfile.mkdtemp(prefix="newsletter-export-"))
    try:
        out.chmod(0o777)
        exported = run_as_reader(readonly_folder, "subscribers", "export", str(out / "list.csv"))
        assert exported.returncode == 0, exported.stderr
        assert (out / "list.csv").read_text("utf-8").count("\n") == 6
    finally:
        shutil.rmtree(out)


def test_a_writing_command_says_the_store_cannot_be_written(readonly_folder: Path) -> None:
    before = (readonly_folder / "newsletter.db").read_bytes()
    added = run_as_reader(readonly_folder, "subscribers", "add", "new@example.net")
    assert added.returncode == 1
    assert "cannot write the store" in added.stderr and "Traceback" not in added.stderr
    assert (readonly_folder / "newsletter.db").read_bytes() == before
