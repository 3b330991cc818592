"""docs/deploy.md's set-up: the unit files verified by systemd, parsed and cross-checked against
the CLI, the web unit's gunicorn command started for real, and the Containerfile's promises."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import click
import pytest
import requests

from newsletter import store
from newsletter.cli import main
from newsletter.tokens import Signer

from .conftest import REPO, write_settings
from .smtp_servers import free_port

UNITS = REPO / "deploy" / "systemd"
VENV_BIN = "/opt/newsletter/venv/bin/"


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file as systemd reads it: sections of (key, value), keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}:{number}: a setting outside any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not key=value: {line}"
        current.append((key.strip(), value.strip()))
    return sections


def setting(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def _units(suffix: str) -> list[Path]:
    found = sorted(UNITS.glob(f"*.{suffix}"))
    assert found, f"no .{suffix} files in {UNITS}"
    return found


def test_every_unit_file_is_in_docs_deploy_verbatim() -> None:
    docs = (REPO / "docs" / "deploy.md").read_text("utf-8")
    for path in sorted(UNITS.iterdir()):
        assert f"`deploy/systemd/{path.name}`:\n```ini\n{path.read_text('utf-8')}```" in docs, (
            f"{path.name} differs from its copy in docs/deploy.md"
        )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    # The units name the production venv; verify checks that ExecStart programs exist, so the
    # copies point at this test run's venv, which has the same programs (newsletter, gunicorn).
    here = str(Path(sys.executable).parent) + "/"
    assert Path(here, "gunicorn").exists(), "gunicorn is a test dependency (pip install -e .[dev])"
    for path in UNITS.iterdir():
        (tmp_path / path.name).write_text(path.read_text("utf-8").replace(VENV_BIN, here), "utf-8")
    files = sorted(str(p) for p in tmp_path.iterdir())
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *files], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # unknown keys are only warned about


def test_the_units_hang_together_and_run_commands_that_exist() -> None:
    services = {p.name: parse_unit(p) for p in _units("service")}
    for path in _units("timer"):
        timer = parse_unit(path)
        (target,) = setting(timer, "Timer", "Unit")
        assert target in services, f"{path.name} starts {target}, which is not in deploy/systemd"
        assert setting(timer, "Timer", "OnCalendar"), path.name
        assert setting(timer, "Install", "WantedBy") == ["timers.target"], path.name
    assert setting(parse_unit(UNITS / "newsletter-run-due.timer"), "Timer", "OnCalendar") == [
        "*:0/5"
    ]
    for name, unit in services.items():
        assert setting(unit, "Service", "User") == ["newsletter"], name  # never root
        assert setting(unit, "Service", "WorkingDirectory") == ["/srv/newsletter"], name
        for command in setting(unit, "Service", "ExecStart"):
            _assert_newsletter_commands_exist(name, command)
    for name in ("newsletter-web.service", "newsletter-run-due.service", "newsletter-sync.service"):
        # The secret and the provider's key: the same file for every process that signs links.
        assert setting(services[name], "Service", "EnvironmentFile") == [
            "/etc/newsletter/newsletter.env"
        ]
    assert setting(services["newsletter-run-due.service"], "Service", "Type") == ["oneshot"]


def _assert_newsletter_commands_exist(unit: str, command: str) -> None:
    words: list[str] = []
    for word in shlex.split(command.replace("%%", "%")):
        # `sh -c '…'` carries a command line of its own.
        words += shlex.split(word) if " " in word else [word]
    seen = False
    for start, word in enumerate(words):
        if not word.endswith("bin/newsletter"):
            continue
        seen = True
        group: click.Command = main
        for name in words[start + 1 :]:
            if name.startswith("-") or not isinstance(group, click.Group):
                break
            assert name in group.commands, f"{unit}: `{name}` is not a command: {command}"
            group = group.commands[name]
        assert not isinstance(group, click.Group), f"{unit}: names no command: {command}"
    assert seen or "gunicorn" in command, f"{unit} does not run newsletter: {command}"


def _web_command(port: int) -> list[str]:
    (command,) = setting(parse_unit(UNITS / "newsletter-web.service"), "Service", "ExecStart")
    words = shlex.split(command)
    assert words[0] == VENV_BIN + "gunicorn"
    words[0] = str(Path(sys.executable).parent / "gunicorn")
    words[words.index("--bind") + 1] = f"127.0.0.1:{port}"
    return words


@contextmanager
def _started(command: list[str], cwd: Path, env: dict[str, str], port: int) -> Iterator[None]:
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with closing(socket.socket()) as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read() if process.stdout else ""
                raise AssertionError(f"gunicorn did not start: {output}")
            time.sleep(0.05)  # waiting for a real process to listen
        yield
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout:
            process.stdout.close()


def test_the_web_units_gunicorn_command_answers_one_click_unsubscribe(tmp_path: Path) -> None:
    secret = "a-deploy-test-secret-0123456789abc"
    settings = write_settings(tmp_path, '[web]\nurl = "https://news.example.org"\n')
    with closing(store.open_store(settings.paths.database)) as conn:
        reader = store.add_subscriber(conn, "reader@example.net")
    env = {k: v for k, v in os.environ.items() if k != "NEWSLETTER_CONFIG"}
    env["NEWSLETTER_SECRET"] = secret  # as the environment file gives it
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    port = free_port()
    token = Signer(secret.encode(), settings.list_id).unsubscribe_token(reader.id)
    with _started(_web_command(port), tmp_path, env, port):
        reply = requests.post(
            f"http://127.0.0.1:{port}/unsubscribe/{token}",
            data="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=10,
        )
    assert reply.status_code == 200
    with closing(store.open_store(settings.paths.database)) as conn:
        after = store.get_subscriber(conn, reader.id)
    assert after is not None and after.status == store.Status.UNSUBSCRIBED


def test_the_containerfile_runs_the_web_app_and_run_due_without_baking_secrets() -> None:
    text = (REPO / "Containerfile").read_text("utf-8")
    instructions = [
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    cmd = [line for line in instructions if line.startswith("CMD ")]
    assert cmd == [
        'CMD ["gunicorn", "--workers", "2", "--bind", "0.0.0.0:8080", "newsletter.web:create_app()"]'
    ]
    assert any(line.startswith("USER newsletter") for line in instructions)
    assert not any(
        word in line for line in instructions for word in ("SECRET", "API_KEY", "TOKEN", "PASSWORD")
    )
    ignored = (REPO / ".containerignore").read_text("utf-8").split()
    assert {".newsletter-secret", "*.db", ".git", ".venv"} <= set(ignored)
    loop = (REPO / "deploy" / "run-due-every").read_text("utf-8")
    assert "newsletter run-due" in loop
    assert os.access(REPO / "deploy" / "run-due-every", os.X_OK)
    assert "deploy/run-due-every /usr/local/bin/run-due-every" in text
