"""The tests' private PostgreSQL server (tests/pg_cluster.py) and its fixtures."""

from __future__ import annotations

import os
import pwd
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from .pg_cluster import (
    UNPRIVILEGED_USER,
    PostgresCluster,
    PostgresClusterError,
    find_bin_dir,
)


def scalar(url: str, query: str) -> object:
    with psycopg.connect(url) as connection:
        row = connection.execute(query).fetchone()
    assert row is not None
    return row[0]


def test_the_cluster_answers(postgres_cluster: PostgresCluster) -> None:
    url = postgres_cluster.admin_url
    assert url == f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/postgres"
    version = scalar(url, "SELECT version()")
    assert isinstance(version, str) and version.startswith("PostgreSQL ")
    assert scalar(url, "SHOW server_encoding") == "UTF8"
    assert scalar(url, "SHOW lc_collate") == "C"
    assert scalar(url, "SHOW fsync") == "off"
    assert scalar(url, "SHOW synchronous_commit") == "off"
    assert scalar(url, "SHOW full_page_writes") == "off"
    assert scalar(url, "SHOW max_connections") == "200"


def test_each_test_database_is_its_own(
    postgres_url: str, new_postgres_database: Callable[[], str]
) -> None:
    other = new_postgres_database()
    assert other != postgres_url
    with psycopg.connect(postgres_url) as connection:
        connection.execute("CREATE TABLE only_here (id integer PRIMARY KEY)")
        connection.execute("INSERT INTO only_here VALUES (1)")
    with psycopg.connect(other) as connection:
        assert connection.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
        connection.execute("CREATE TABLE only_here (id integer PRIMARY KEY)")
        assert connection.execute("SELECT count(*) FROM only_here").fetchone() == (0,)
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT count(*) FROM only_here").fetchone() == (1,)


def test_a_dropped_database_is_gone_even_with_a_connection_left_open(
    postgres_cluster: PostgresCluster,
) -> None:
    url = postgres_cluster.new_database("dropped_with_a_connection")
    left_open = psycopg.connect(url)
    try:
        postgres_cluster.drop_database("dropped_with_a_connection")
        names = scalar(postgres_cluster.admin_url, "SELECT array_agg(datname) FROM pg_database")
        assert isinstance(names, list) and "dropped_with_a_connection" not in names
        with pytest.raises(psycopg.OperationalError):
            left_open.execute("SELECT 1")
    finally:
        left_open.close()
    with pytest.raises(PostgresClusterError, match="lower-case letters"):
        postgres_cluster.new_database("Robert'); DROP TABLE students;--")


def other_local_addresses() -> set[tuple[int, str]]:
    """(family, address) of this machine that are not 127.0.0.1: another loopback address, ::1,
    and the addresses of the host's name and of its default route, where it has them."""
    found: set[tuple[int, str]] = {(socket.AF_INET, "127.0.0.2")}
    if socket.has_ipv6:
        found.add((socket.AF_INET6, "::1"))
    try:
        for family, _, _, _, address in socket.getaddrinfo(socket.gethostname(), None):
            if family in (socket.AF_INET, socket.AF_INET6):
                found.add((family, str(address[0])))
    except OSError:
        pass
    # A UDP "connect" sends nothing: it only picks the address of the route out.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            found.add((socket.AF_INET, probe.getsockname()[0]))
        except OSError:
            pass
    found.discard((socket.AF_INET, "127.0.0.1"))
    return found


def test_the_server_listens_on_127_0_0_1_only(postgres_cluster: PostgresCluster) -> None:
    url = postgres_cluster.admin_url
    assert scalar(url, "SHOW listen_addresses") == "127.0.0.1"
    with psycopg.connect(url) as connection:
        rules = connection.execute(
            "SELECT type, address FROM pg_hba_file_rules ORDER BY line_number"
        ).fetchall()
    assert rules == [("local", None), ("host", "127.0.0.1")]
    addresses = other_local_addresses()
    assert (socket.AF_INET, "127.0.0.2") in addresses
    for family, address in sorted(addresses):
        with socket.socket(family, socket.SOCK_STREAM) as client:
            client.settimeout(2)
            try:
                client.connect((address, postgres_cluster.port))
            except OSError:
                continue  # refused (or no such address here): nothing listens there
            pytest.fail(f"the server accepts connections on {address}")


def test_the_cluster_is_private_not_a_system_service(postgres_cluster: PostgresCluster) -> None:
    url = postgres_cluster.admin_url
    base = postgres_cluster.base_dir
    assert scalar(url, "SHOW data_directory") == str(base / "data")
    assert scalar(url, "SHOW config_file") == str(base / "data" / "postgresql.conf")
    assert scalar(url, "SHOW unix_socket_directories") == str(base)
    assert scalar(url, "SHOW port") == str(postgres_cluster.port)
    assert not str(base).startswith(("/var/lib/postgresql", "/etc/postgresql"))
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    if os.geteuid() == 0:
        # initdb and the server refuse root: they run as nobody, who owns the folder.
        nobody = pwd.getpwnam(UNPRIVILEGED_USER).pw_uid
        assert base.stat().st_uid == nobody
        with psycopg.connect(url) as connection:  # open: its server process ends with it
            row = connection.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            status = Path(f"/proc/{row[0]}/status").read_text(encoding="utf-8")
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(nobody)] * 4
    else:
        assert base.stat().st_uid == os.geteuid()


def test_stop_ends_the_server_and_removes_its_folder() -> None:
    cluster = PostgresCluster().start()
    base, port = cluster.base_dir, cluster.port
    assert cluster.start_seconds is not None and cluster.start_seconds < 60
    assert scalar(cluster.new_database("kept_until_stop"), "SELECT 1") == 1
    cluster.stop()
    assert not base.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=2)
    with pytest.raises(PostgresClusterError, match="not started"):
        _ = cluster.admin_url
    cluster.stop()  # again: nothing to do


def test_missing_binaries_say_how_to_install_them() -> None:
    with pytest.raises(PostgresClusterError) as caught:
        find_bin_dir(path="/nonexistent", debian_dirs="/nonexistent/*/bin")
    message = str(caught.value)
    assert "missing on PATH: initdb, pg_ctl, postgres" in message
    assert "run scripts/install-postgresql" in message


@pytest.fixture
def fake_bin_dir() -> Iterator[Path]:
    """A folder for stand-ins of PostgreSQL's programs that nobody, too, may run."""
    folder = Path(tempfile.mkdtemp(prefix="newsletter-fake-pg-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()


def fake_program(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script, encoding="utf-8")
    path.chmod(0o755)


def test_a_failing_initdb_is_reported_with_its_output(fake_bin_dir: Path) -> None:
    fake_program(fake_bin_dir, "initdb", 'echo "initdb: error: the disk is on fire"\nexit 3\n')
    fake_program(fake_bin_dir, "pg_ctl", "exit 0\n")
    fake_program(fake_bin_dir, "postgres", "exit 0\n")
    with pytest.raises(PostgresClusterError) as caught:
        PostgresCluster(bin_dir=fake_bin_dir).start()
    message = str(caught.value)
    assert "initdb failed (exit 3)" in message
    assert "the disk is on fire" in message


def test_a_failing_start_is_reported_with_the_servers_log(fake_bin_dir: Path) -> None:
    # initdb's stand-in makes the data folder; pg_ctl's writes the log (-l, the 5th argument).
    fake_program(fake_bin_dir, "initdb", 'mkdir -p "$2"\n')
    fake_program(
        fake_bin_dir,
        "pg_ctl",
        'echo "FATAL:  could not create shared memory segment" >> "$5"\n'
        'echo "pg_ctl: could not start server"\nexit 1\n',
    )
    fake_program(fake_bin_dir, "postgres", "exit 0\n")
    with pytest.raises(PostgresClusterError) as caught:
        PostgresCluster(bin_dir=fake_bin_dir).start()
    message = str(caught.value)
    assert "pg_ctl start failed (exit 1)" in message
    assert "pg_ctl: could not start server" in message
    assert "could not create shared memory segment" in message
    log = Path(message.split("the server's log, ", 1)[1].split(":\n", 1)[0])
    assert log.name == "postgres.log"
    assert not log.parent.exists()  # the failed start cleaned up after itself
