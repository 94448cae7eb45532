"""Private instances of the external services the scale-out tests use, on 127.0.0.1 in
temporary directories: a PostgreSQL cluster (``initdb`` + ``pg_ctl``), started once per session.

Debian keeps PostgreSQL's server programs out of ``PATH`` (``/usr/lib/postgresql/<v>/bin``);
they are looked for there too. PostgreSQL refuses to run as root, so as root the cluster runs
as the ``postgres`` user the Debian package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

__all__ = ["PostgresServer", "free_port", "require_external"]


def require_external(what: str, found: bool) -> None:
    """Skip without ``what``, unless CI demands every external service (then fail)."""
    if found:
        return
    if os.environ.get("DRIFTD_REQUIRE_EXTERNAL"):
        pytest.fail(f"{what} is required here (DRIFTD_REQUIRE_EXTERNAL is set) but not installed")
    pytest.skip(f"{what} is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PostgresServer:
    """A throwaway PostgreSQL cluster: trust authentication on 127.0.0.1 only, no fsync."""

    def __init__(self) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        require_external("PostgreSQL (initdb, pg_ctl)", initdb is not None and pg_ctl is not None)
        assert initdb is not None and pg_ctl is not None
        self._initdb, self._pg_ctl = initdb, pg_ctl
        self._as: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="driftd-pg-"))
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root and there is no postgres user to run PostgreSQL as")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.data = self.root / "data"
        self.port = free_port()

    def _run(self, args: Sequence[str]) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, cwd=self.root)

    def start(self) -> PostgresServer:
        self._run([self._initdb, "-D", str(self.data), "-A", "trust", "-U", "driftd", "--no-sync"])
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": "''",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self._start()
        return self

    def _start(self) -> None:
        log = str(self.root / "log")
        self._run([self._pg_ctl, "-D", str(self.data), "-w", "-t", "30", "-l", log, "start"])

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://driftd@127.0.0.1:{self.port}/{database}"

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            [*self._as, self._pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"],
            capture_output=True,
            check=False,
        )

    def restart(self) -> None:
        """Stop and start again on the same port and data."""
        self.stop()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self._start()
            except subprocess.CalledProcessError:
                time.sleep(0.2)
            else:
                return
        raise TimeoutError("PostgreSQL did not restart")

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
