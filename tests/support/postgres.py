"""Find or start a PostgreSQL server for the tests; under CI=true a missing one is a failure."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg


class NoPostgres(RuntimeError):
    """No PostgreSQL server could be found or started."""


def _answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _local_dsns() -> list[str]:
    users = [os.environ.get("PGUSER"), "postgres", os.environ.get("USER"), "root"]
    seen: list[str] = []
    for user in users:
        if user and user not in seen:
            seen.append(user)
    return [f"postgresql://{u}@127.0.0.1:5432/postgres" for u in seen]


def _bindir() -> str | None:
    found = shutil.which("pg_ctl")
    if found:
        return str(Path(found).parent)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return str(Path(candidates[-1]).parent) if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def throwaway_server() -> Iterator[str]:
    """Start a private PostgreSQL cluster in a temp dir (trust auth) and yield an admin DSN."""
    bindir = _bindir()
    if bindir is None:
        raise NoPostgres("no pg_ctl/initdb found to start a throwaway PostgreSQL")
    root = Path(tempfile.mkdtemp(prefix="renewals-pg-"))
    data = root / "data"
    port = _free_port()
    prefix: list[str] = []
    user = "postgres"
    if os.geteuid() == 0:
        # initdb refuses to run as root; run the cluster as the postgres system user.
        shutil.chown(root, user="postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    else:
        user = os.environ.get("USER", "postgres")
    subprocess.run(
        [*prefix, f"{bindir}/initdb", "-D", str(data), "-A", "trust", "-U", user, "--no-sync"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *prefix,
            f"{bindir}/pg_ctl",
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    dsn = f"postgresql://{user}@127.0.0.1:{port}/postgres"
    try:
        for _ in range(50):
            if _answers(dsn):
                break
            time.sleep(0.2)
        yield dsn
    finally:
        subprocess.run(
            [*prefix, f"{bindir}/pg_ctl", "-D", str(data), "-m", "fast", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an admin DSN: RENEWALS_TEST_DATABASE_URL, else 127.0.0.1:5432, else a throwaway server."""
    configured = os.environ.get("RENEWALS_TEST_DATABASE_URL")
    if configured:
        dsn = configured.replace("postgresql+psycopg://", "postgresql://")
        if not _answers(dsn):
            raise NoPostgres(f"RENEWALS_TEST_DATABASE_URL does not answer: {dsn.split('@')[-1]}")
        yield dsn
        return
    for dsn in _local_dsns():
        if _answers(dsn):
            yield dsn
            return
    with throwaway_server() as dsn:
        yield dsn


@contextmanager
def scratch_database(admin_dsn: str) -> Iterator[str]:
    """Create a uniquely named database, yield its SQLAlchemy URL, and drop it afterwards."""
    name = f"renewals_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_dsn.rsplit("/", 1)[0]
    try:
        yield f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
