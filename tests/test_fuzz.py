"""Schemathesis against the live OpenAPI description of a real daemon.

Every documented operation is generated from ``/openapi.json`` (schema-valid and schema-breaking
cases, coverage and fuzzing phases) and every response is held to all of schemathesis' checks:
no 5xx, only documented status codes, content types, headers and bodies, valid data accepted,
invalid data refused, ``405`` with ``Allow`` for undeclared methods. The number of examples per
operation is bounded so that the run fits in CI; raise it with ``DRIFTD_FUZZ_EXAMPLES`` and vary
the seed with ``DRIFTD_FUZZ_SEED`` to dig deeper.

The daemon has a token per scope, and the document names each operation's scope: the hooks
(``tests/hostile/schemathesis_hooks.py``) send the right token, and the ``ignored_auth`` check
sends none and a wrong one. The hooks also teach schemathesis the one cross-field rule JSON
Schema cannot state (``ids`` has one entry per instance).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, config_text

EXAMPLES = int(os.environ.get("DRIFTD_FUZZ_EXAMPLES", "30"))
SEED = os.environ.get("DRIFTD_FUZZ_SEED", "20240601")
HOOKS_DIR = Path(__file__).parent / "hostile"
TOKENS = {scope: f"fuzz-{scope}-token-0123456789" for scope in ("ingest", "predict", "operate")}
TOKENS["read"] = "fuzz-read-token-0123456789"


@pytest.fixture
def daemon(daemon_config: Path) -> Iterator[DaemonProcess]:
    """The shared test daemon, with one token per scope."""
    tokens = "".join(f'{scope} = ["{token}"]\n' for scope, token in TOKENS.items())
    text = daemon_config.read_text()
    daemon_config.write_text(text + "[auth.tokens]\n" + tokens)
    proc = DaemonProcess(daemon_config).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def daemon_config(tmp_path: Path, state_dir: Path, bootstrap_csv: Path) -> Path:
    """The class type fixed in the schema, so that the document states it: left to the first
    label, it documents "an integer or a string" and refuses the type not chosen, which
    schemathesis rightly reports as a schema-valid request refused."""
    path = tmp_path / "driftd.toml"
    text = config_text(state_dir, bootstrap=str(bootstrap_csv))
    path.write_text(
        text.replace('task = "classification"', 'task = "classification"\nlabel_type = "integer"')
    )
    return path


def schemathesis_cli() -> Path:
    pytest.importorskip("schemathesis")
    path = Path(sys.executable).with_name("schemathesis")
    if not path.exists():
        pytest.skip("the schemathesis command is not next to this interpreter")
    return path


def fetch_spec(daemon: DaemonProcess, path: Path) -> int:
    """Save the document (a read) to ``path``; return how many operations it describes."""
    with daemon.client(headers={"Authorization": f"Bearer {TOKENS['read']}"}) as c:
        spec = c.get("/openapi.json").json()
    path.write_text(json.dumps(spec))
    return sum(len(methods) for methods in spec["paths"].values())


def test_every_operation_conforms_to_its_openapi_description_under_fuzzing(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    cli = schemathesis_cli()
    spec = tmp_path / "openapi.json"
    expected_ops = fetch_spec(daemon, spec)
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "DRIFTD_FUZZ_TOKENS": json.dumps(TOKENS),
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(HOOKS_DIR), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    start = time.monotonic()
    out = subprocess.run(
        [
            str(cli),
            "run",
            str(spec),
            "--url",
            daemon.url,
            "--checks",
            "all",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            SEED,
            "--workers",
            "2",
            "--request-timeout",
            "30",
            "--generation-database",
            "none",
            "--no-color",
        ],
        cwd=tmp_path,  # nothing (reports, example database) is written into the repository
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    elapsed = time.monotonic() - start
    report = out.stdout + out.stderr
    tail = report[-6000:]
    logs = daemon.log_text()[-4000:]
    assert out.returncode == 0, f"schemathesis found problems (seed {SEED}):\n{tail}\n{logs}"
    tested = re.search(r"Tested:\s+(\d+)", report)
    cases = re.search(r"(\d+) generated, (\d+) passed", report)
    assert tested and int(tested.group(1)) == expected_ops, tail
    assert cases and cases.group(1) == cases.group(2), tail
    assert int(cases.group(1)) >= 10 * expected_ops, f"too few cases were generated:\n{tail}"
    print(f"schemathesis: {cases.group(1)} cases over {expected_ops} operations in {elapsed:.1f} s")

    # The daemon took all of it without an unhandled error and still serves.
    assert not [e for e in daemon.lines if "unhandled error" in str(e.get("message"))]
    with daemon.client() as c:
        assert c.get("/healthz").status_code == 200
        metrics = c.get("/metrics").text
    assert re.search(r'driftd_records_rejected_total\{reason="invalid_record"\} [1-9]', metrics)
    # Cases reached the handlers with their scope's token (predictions were served), and the
    # ignored_auth check's requests without a valid token were refused.
    assert re.search(r"^driftd_predictions_total [1-9]", metrics, re.MULTILINE), metrics[:2000]
    assert re.search(r'driftd_records_rejected_total\{reason="unauthorized"\} [1-9]', metrics)
