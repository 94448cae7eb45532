"""The systemd units: the directives the daemon relies on, and what systemd-analyze says of them.

``systemd-analyze`` needs no running systemd: ``security --offline=yes`` scores a unit file and
``verify`` loads it against the host's unit search path. Both come with Debian's ``systemd``
package; only those tests are skipped when it is missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
INSTALLED_BINARY = "/opt/driftd/.venv/bin/driftd"
MAX_EXPOSURE = 1.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package: systemd)",
)


def directives(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> every value assigned, in order (keys such as SystemCallFilter repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a Key=value line: {raw!r}"
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def one(unit: dict[str, list[str]], key: str) -> str:
    values = unit.get(key, [])
    assert len(values) == 1, f"{key}: expected exactly one assignment, got {values}"
    return values[0]


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit or "s"]
    return total


# name -> (config file, state directory) of each unit
EXPECTED = {
    "driftd.service": ("/etc/driftd/driftd.toml", "driftd"),
    "driftd@.service": ("/etc/driftd/%i.toml", "driftd/%i"),
}


@pytest.fixture(params=sorted(EXPECTED))
def unit_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def unit(unit_name: str) -> dict[str, list[str]]:
    return directives(UNITS / unit_name)


def test_unit_declares_notify_watchdog_and_dynamic_state(
    unit_name: str, unit: dict[str, list[str]]
) -> None:
    config, state = EXPECTED[unit_name]
    assert one(unit, "Service.Type") == "notify"
    assert one(unit, "Service.NotifyAccess") == "main"
    assert 10 <= seconds(one(unit, "Service.WatchdogSec")) <= 120
    assert one(unit, "Service.DynamicUser") == "yes"
    assert one(unit, "Service.StateDirectory") == state
    assert one(unit, "Service.UMask") == "0077"
    assert one(unit, "Service.Restart") == "on-failure"
    assert one(unit, "Service.ExecStart") == f"{INSTALLED_BINARY} run --config {config}"
    assert one(unit, "Service.ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "Install.WantedBy") == "multi-user.target"


def test_stop_reaches_the_training_child_and_outlasts_the_drain(
    unit: dict[str, list[str]],
) -> None:
    """SIGTERM goes to the daemon alone (it stops its child); the rest get SIGKILL after it."""
    assert one(unit, "Service.KillMode") == "mixed"
    # The daemon's own drain timeout defaults to 10 s (server.shutdown_timeout_seconds).
    assert seconds(one(unit, "Service.TimeoutStopSec")) > 10


def test_sandbox_keeps_what_the_daemon_needs(unit: dict[str, list[str]]) -> None:
    # prometheus_client's process_* metrics read /proc/stat, which ProcSubset=pid hides.
    assert "Service.ProcSubset" not in unit
    # OpenBLAS calls mbind, the training child's memory cap is setrlimit (both @resources),
    # and the training child is a spawned process (@process: fork, execve).
    filters = " ".join(unit["Service.SystemCallFilter"]).split()
    denied = {f.lstrip("~") for f in filters if f.startswith("~")}
    assert "@system-service" in filters
    assert not denied & {"@resources", "mbind", "setrlimit", "@process", "execve"}
    assert one(unit, "Service.SystemCallErrorNumber") == "EPERM"
    families = set(one(unit, "Service.RestrictAddressFamilies").split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}  # sd_notify, HTTP, alerts
    assert one(unit, "Service.IPAddressDeny") == "any"
    assert one(unit, "Service.IPAddressAllow") == "localhost"
    assert one(unit, "Service.PrivateTmp") == "yes"
    assert one(unit, "Service.PrivateDevices") == "yes"
    assert one(unit, "Service.ProtectSystem") == "strict"


def test_template_differs_from_the_single_unit_only_per_instance() -> None:
    single = directives(UNITS / "driftd.service")
    template = directives(UNITS / "driftd@.service")
    per_instance = {
        "Unit.Description",
        "Service.ExecStart",
        "Service.EnvironmentFile",
        "Service.StateDirectory",
        "Service.WorkingDirectory",
    }
    assert single.keys() == template.keys()
    assert {k for k in single if single[k] != template[k]} == per_instance
    for key in per_instance - {"Unit.Description"}:
        assert "%i" in one(template, key)


def _overall_exposure(unit_file: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert found, f"no overall exposure level in:\n{result.stdout}\n{result.stderr}"
    return float(found.group(1))


@needs_analyze
def test_security_exposure_is_at_most_one(unit_name: str) -> None:
    exposure = _overall_exposure(UNITS / unit_name)
    assert exposure <= MAX_EXPOSURE, f"{unit_name}: exposure {exposure} > {MAX_EXPOSURE}"


@needs_analyze
def test_the_exposure_check_tells_a_naive_unit_apart(tmp_path: Path) -> None:
    """Guards the parsing above: an unsandboxed unit must score as the unsafe one it is."""
    naive = tmp_path / "naive.service"
    naive.write_text(f"[Service]\nExecStart={INSTALLED_BINARY} run\n")
    assert _overall_exposure(naive) > 9.0


@pytest.fixture
def verifiable(tmp_path: Path, unit_name: str) -> Path:
    """A copy of the unit whose executables exist on this host.

    ``verify`` refuses a unit whose ``ExecStart=`` binary is missing, and the daemon lives in
    ``/opt/driftd`` only on an installed host; ``/bin/kill`` (procps) may be missing in a slim CI
    image. The copy points both at a stub, everything else is the unit as shipped; the exact
    command lines are held by the directive tests above.
    """
    stub = tmp_path / "bin" / "stub"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = (UNITS / unit_name).read_text()
    text = text.replace(INSTALLED_BINARY, str(stub)).replace("/bin/kill ", f"{stub} ")
    copy = tmp_path / unit_name
    copy.write_text(text)
    return copy


@needs_analyze
def test_verify_reports_nothing(verifiable: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(verifiable)],
        capture_output=True,
        text=True,
        check=False,
    )
    # verify exits 0 on an unknown or unparsable directive and only prints a warning for it,
    # so the output must be empty as well.
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""


@needs_analyze
def test_verify_catches_a_misspelled_directive(verifiable: Path) -> None:
    """Guards the check above: a typo in a directive must show up in verify's output."""
    verifiable.write_text(verifiable.read_text().replace("PrivateTmp=", "PrivatTmp="))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(verifiable)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "PrivatTmp" in result.stderr


def _expand(entry: str, seen: set[str] | None = None) -> set[str]:
    """The system calls behind a SystemCallFilter entry, groups expanded recursively."""
    if not entry.startswith("@"):
        return {entry}
    seen = set() if seen is None else seen
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager", entry],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names: set[str] = set()
    for raw in listing.splitlines()[1:]:
        line = raw.strip()
        if line and not line.startswith("#") and line not in seen:
            seen.add(line)
            names |= _expand(line, seen)
    return names


def allowed_syscalls(unit: dict[str, list[str]]) -> set[str]:
    """Apply the unit's SystemCallFilter= lines in order, as systemd does for an allow list."""
    allowed: set[str] = set()
    for i, line in enumerate(unit["Service.SystemCallFilter"]):
        deny = line.startswith("~")
        assert not (i == 0 and deny), "the first SystemCallFilter= line must be an allow list"
        names = set().union(*(_expand(e) for e in line.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed


SANDBOXED_WORKLOAD = """
import ctypes, errno, json, multiprocessing, os, sys

def sandbox(allowed):
    seccomp = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_rule_add.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint
    ]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    ctx = seccomp.seccomp_init(0x00050000 | errno.EPERM)  # SystemCallErrorNumber=EPERM
    for name in allowed:
        nr = seccomp.seccomp_syscall_resolve_name(name.encode())
        if nr >= 0:  # names of other architectures do not resolve
            assert seccomp.seccomp_rule_add(ctx, 0x7FFF0000, nr, 0) == 0, name
    assert seccomp.seccomp_load(ctx) == 0, "seccomp_load"
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(65, 1, 0, 0, 0) == 0, "PR_SET_MDWE"  # MemoryDenyWriteExecute=yes

def fit(tag):
    import numpy as np
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    import skops.io as sio
    X, y = make_classification(n_samples=2000, n_features=10, random_state=0)
    a = np.random.default_rng(0).random((400, 400))
    np.linalg.svd(a @ a)  # OpenBLAS: threads, mbind
    for est in (HistGradientBoostingClassifier(max_iter=20), LogisticRegression()):
        est.fit(X, y)
    blob = sio.dumps(est)
    sio.loads(blob, trusted=sio.get_untrusted_types(data=blob)).predict(X[:5])
    print(tag, "fit ok", flush=True)

def child():
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, resource.RLIM_INFINITY))  # memory cap
    fit("child")

if __name__ == "__main__":
    sandbox(json.loads(sys.argv[1]))
    try:
        os.setuid(0)
    except PermissionError:
        print("setuid refused", flush=True)
    import asyncio, socket, sqlite3, river.drift, fastapi, uvicorn, prometheus_client
    fit("parent")
    db = sqlite3.connect(os.path.join(sys.argv[2], "store.sqlite3"))
    db.execute("pragma journal_mode=wal")
    db.execute("create table t (x)")
    db.commit()
    db.close()
    async def serve():
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        server.close()
        await server.wait_closed()
    asyncio.run(serve())
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        pass
    proc = multiprocessing.get_context("spawn").Process(target=child)
    proc.start()
    proc.join()
    print("child exit", proc.exitcode, flush=True)
"""


def _mdwe_supported() -> bool:
    probe = "import ctypes; raise SystemExit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0)"
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


@pytest.mark.slow
@needs_analyze
def test_the_daemon_stack_runs_under_the_units_syscall_filter_and_wx(
    tmp_path: Path, unit: dict[str, list[str]]
) -> None:
    """numpy/OpenBLAS, scikit-learn, skops, SQLite, TCP, sd_notify and a spawned training child
    work under the unit's exact SystemCallFilter= (via libseccomp, as systemd installs it)
    and under W^X (the kernel's PR_SET_MDWE, equivalent to MemoryDenyWriteExecute=yes)."""
    if not _mdwe_supported():
        pytest.skip("the kernel has no PR_SET_MDWE (Linux 6.3+) to stand in for the W^X filter")
    assert one(unit, "Service.MemoryDenyWriteExecute") == "yes"
    allowed = sorted(allowed_syscalls(unit))
    assert "mbind" in allowed
    assert "setuid" not in allowed
    # A file, not -c: the spawned child re-imports the parent's main module.
    script = tmp_path / "workload.py"
    script.write_text(SANDBOXED_WORKLOAD)
    result = subprocess.run(
        [sys.executable, str(script), json.dumps(allowed), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n") == [
        "setuid refused",
        "parent fit ok",
        "child fit ok",
        "child exit 0",
        "",
    ]
