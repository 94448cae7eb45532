"""Token scopes against a real daemon: each route opens to its scope only.

The daemon under test has one token per scope (some from token files, some from the config),
plus one token that holds both ``ingest`` and ``predict``. Every route is tried with every
scope's token, with none and with an unknown one: the right scope passes, another scope's
token gets ``403 forbidden``, none or an unknown token ``401 unauthorized``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DaemonProcess, config_text, make_rows, write_csv

TOKENS = {
    "ingest": "ingest-token-000000000000",
    "predict": "predict-token-00000000000",
    "operate": "operate-token-00000000000",
    "read": "read-token-00000000000000",
}
BOTH = "producer-token-ingest-and-predict"  # listed under ingest and predict
GOOD = {"x0": 0.25, "x1": 0.5, "x2": -1.0, "color": "red"}


def start(base: Path, *, auth: str) -> DaemonProcess:
    csv_path = write_csv(base / "boot.csv", make_rows(1000, seed=1))
    cfg = base / "driftd.toml"
    cfg.write_text(config_text(base / "state", bootstrap=str(csv_path), extra=auth))
    return DaemonProcess(cfg, probe_token=TOKENS["read"]).start()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("auth")
    (base / "ingest.tokens").write_text(f"{TOKENS['ingest']}\n\n{BOTH}\n")
    (base / "operate.tokens").write_text(TOKENS["operate"] + "\n")
    auth = (
        "[auth.tokens]\n"
        f'predict = ["{TOKENS["predict"]}", "{BOTH}"]\nread = ["{TOKENS["read"]}"]\n'
        "[auth.token_files]\n"
        f'ingest = ["{base / "ingest.tokens"}"]\noperate = ["{base / "operate.tokens"}"]\n'
    )
    proc = start(base, auth=auth)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def anon(live: DaemonProcess) -> Iterator[httpx.Client]:
    with live.client() as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# Each route, the scope it needs, the request it is tried with, and the statuses that mean the
# request got past the check (a rollback with nothing to roll back to is a 409 of its own).
ROUTES: list[tuple[str, str, str, dict[str, Any], set[int]]] = [
    ("ingest", "POST", "/v1/records", {"json": [{"features": GOOD}]}, {200}),
    ("ingest", "POST", "/v1/labels", {"json": [{"id": "auth-label", "label": 1}]}, {200}),
    ("predict", "POST", "/v1/predict", {"json": {"instances": [GOOD]}}, {200}),
    ("operate", "POST", "/v1/retrain", {}, {202}),
    ("operate", "POST", "/v1/rollback", {}, {200, 409}),
    ("read", "GET", "/v1/status", {}, {200}),
    ("read", "GET", "/v1/models", {}, {200}),
    ("read", "GET", "/v1/events", {"params": {"limit": 5}}, {200}),
    ("read", "GET", "/openapi.json", {}, {200}),
    ("read", "GET", "/docs", {}, {200}),
]
MATRIX = [
    pytest.param(need, method, path, kw, ok, given, id=f"{method} {path} with {given}")
    for need, method, path, kw, ok in ROUTES
    for given in TOKENS
]


def rejected(client: httpx.Client, reason: str) -> float:
    m = re.search(
        rf'^driftd_records_rejected_total\{{reason="{reason}"\}} (\S+)$',
        client.get("/metrics").text,
        re.MULTILINE,
    )
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize(("need", "method", "path", "kw", "ok", "given"), MATRIX)
def test_a_route_passes_its_own_scope_and_refuses_every_other_with_403(
    anon: httpx.Client,
    need: str,
    method: str,
    path: str,
    kw: dict[str, Any],
    ok: set[int],
    given: str,
) -> None:
    before = rejected(anon, "forbidden")
    r = anon.request(method, path, headers=bearer(TOKENS[given]), **kw)
    if given == need:
        assert r.status_code in ok, r.text[:300]
        assert rejected(anon, "forbidden") == before
        return
    assert r.status_code == 403, r.text[:300]
    assert r.json() == {
        "error": "forbidden",
        "message": f"this route needs a token with the {need!r} scope, which the token given"
        " does not hold",
        "errors": [],
    }
    assert r.headers["www-authenticate"] == f'Bearer error="insufficient_scope", scope="{need}"'
    assert rejected(anon, "forbidden") == before + 1


@pytest.mark.parametrize(
    ("need", "method", "path", "kw"),
    [pytest.param(*route[:4], id=f"{route[1]} {route[2]}") for route in ROUTES],
)
def test_a_route_refuses_no_token_and_an_unknown_token_with_401(
    anon: httpx.Client, need: str, method: str, path: str, kw: dict[str, Any]
) -> None:
    before = rejected(anon, "unauthorized")
    missing = anon.request(method, path, **kw)
    assert missing.status_code == 401, missing.text[:300]
    assert missing.json()["error"] == "unauthorized"
    assert need in missing.json()["message"]
    assert missing.headers["www-authenticate"] == f'Bearer scope="{need}"'
    for header in (f"Bearer {TOKENS[need]}x", f"bearer {TOKENS[need][:-1]}", "Basic abc"):
        wrong = anon.request(method, path, headers={"Authorization": header}, **kw)
        assert wrong.status_code == 401, (header, wrong.text[:300])
        assert wrong.headers["www-authenticate"] == f'Bearer error="invalid_token", scope="{need}"'
    assert rejected(anon, "unauthorized") == before + 4


def test_a_token_listed_under_two_scopes_holds_both_and_no_other(anon: httpx.Client) -> None:
    """``BOTH`` comes from a token file for ingest and from the config for predict."""
    headers = bearer(BOTH)
    assert anon.post("/v1/records", json=[{"features": GOOD}], headers=headers).status_code == 200
    r = anon.post("/v1/predict", json={"instances": [GOOD]}, headers=headers)
    assert r.status_code == 200, r.text
    assert anon.get("/v1/status", headers=headers).status_code == 403
    assert anon.post("/v1/retrain", headers=headers).status_code == 403


def test_the_probes_are_open_by_default_to_anyone(anon: httpx.Client) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert anon.get(path).status_code == 200, path
        assert anon.get(path, headers=bearer("not-a-token-at-all-000")).status_code == 200


def test_the_openapi_document_names_each_operations_scope(anon: httpx.Client) -> None:
    spec = anon.get("/openapi.json", headers=bearer(TOKENS["read"])).json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for need, method, path, _, _ in ROUTES:
        if path in ("/openapi.json", "/docs"):
            assert path not in spec["paths"]
            continue
        op = spec["paths"][path][method.lower()]
        assert op["security"] == [{"bearer": [need]}], path
        assert {"401", "403"} <= set(op["responses"]), path
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert "security" not in spec["paths"][probe]["get"], probe


def test_closed_probes_need_the_read_scope(tmp_path: Path) -> None:
    auth = (
        "[auth]\nopen_probes = false\n"
        f'[auth.tokens]\nread = ["{TOKENS["read"]}"]\ningest = ["{TOKENS["ingest"]}"]\n'
    )
    daemon = start(tmp_path, auth=auth)
    try:
        with daemon.client() as c:
            for path in ("/healthz", "/readyz", "/metrics"):
                assert c.get(path).status_code == 401, path
                assert c.get(path, headers=bearer(TOKENS["ingest"])).status_code == 403, path
                assert c.get(path, headers=bearer(TOKENS["read"])).status_code == 200, path
            spec = c.get("/openapi.json", headers=bearer(TOKENS["read"])).json()
            assert spec["paths"]["/metrics"]["get"]["security"] == [{"bearer": ["read"]}]
            # A scope without any token is closed to everyone.
            r = c.post("/v1/predict", json={"instances": [GOOD]}, headers=bearer(TOKENS["read"]))
            assert r.status_code == 403
    finally:
        daemon.stop()


def test_the_cli_sends_its_token_to_reads_and_to_operator_actions(live: DaemonProcess) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_")}
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "driftd", *args, "--url", live.url],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )

    assert cli("status").returncode == 1
    shown = cli("events", "--limit", "1", "--token", TOKENS["read"])
    assert shown.returncode == 0, shown.stderr
    assert "events" in json.loads(shown.stdout)
    refused = cli("rollback", "--token", TOKENS["read"])
    assert refused.returncode == 1
    assert "HTTP 403: this route needs a token with the 'operate' scope" in refused.stderr
    env["DRIFTD_TOKEN"] = TOKENS["read"]
    assert cli("models").returncode == 0
