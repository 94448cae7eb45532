"""Private instances of the external services the scale-out tests use, on 127.0.0.1 in
temporary directories: a PostgreSQL cluster (``initdb`` + ``pg_ctl``, started once per session)
and ``nats-server -js`` (the benchmarks start them too).

Debian keeps PostgreSQL's server programs out of ``PATH`` (``/usr/lib/postgresql/<v>/bin``);
they are looked for there too. PostgreSQL refuses to run as root, so as root the cluster runs
as the ``postgres`` user the Debian package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "NatsServer",
    "PostgresServer",
    "free_port",
    "nats_module",
    "psycopg_module",
    "require_external",
]


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


def psycopg_module() -> Any:
    """psycopg 3, for a test module's top level: the module is skipped without it, unless CI
    demands every external service (then the run fails)."""
    if os.environ.get("DRIFTD_REQUIRE_EXTERNAL"):
        try:
            import psycopg
        except ImportError:
            pytest.fail(
                "psycopg is required here (DRIFTD_REQUIRE_EXTERNAL is set) but not installed"
            )
        return psycopg
    return pytest.importorskip("psycopg", reason="psycopg is not installed")


def nats_module() -> Any:
    """nats-py; skipped without it, unless CI demands every check (then fail)."""
    try:
        import nats
    except ImportError:
        require_external("nats-py", False)
    return nats


class NatsServer:
    """``nats-server -js`` on 127.0.0.1, its store in ``directory``; restartable on its port."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("nats-server")
        require_external("nats-server", binary is not None)
        assert binary is not None
        self.binary = binary
        nats_module()
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        argv = [self.binary, "-js", "-sd", str(self.directory / "js")]
        argv += ["-a", "127.0.0.1", "-p", str(self.port)]
        log = (self.directory / "nats.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"nats-server exited: {self.log_text()}")
            return "Server is ready" in self.log_text().rsplit("Starting nats-server", 1)[-1]

        deadline = time.monotonic() + 15
        while not up():
            if time.monotonic() > deadline:
                pytest.fail(f"nats-server did not listen in 15 s: {self.log_text()}")
            time.sleep(0.05)
        return self

    def log_text(self) -> str:
        return (self.directory / "nats.log").read_text(errors="replace")

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
