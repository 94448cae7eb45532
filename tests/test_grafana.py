"""The Grafana dashboard and provisioning in ``grafana/``, proved without Grafana.

Grafana itself is not installed in CI, so the dashboard is held to its contract in two ways.
Structurally: valid JSON, unique panel ids, no overlapping panels, every panel on the
``${datasource}`` variable and every query filtered by ``$instance``, units on every panel.
Against real services: a ``driftd demo`` daemon plays its drifting stream, a real Prometheus
scrapes it every second and evaluates ``driftd.rules.yml``, and every PromQL expression of the
dashboard, of the Grafana-managed alerts and of the rules file is run through Prometheus'
HTTP API. Each must evaluate without error, and each panel query must return data for the
demo. A last test stops a daemon and follows ``DriftdDown`` from Prometheus into a real
Alertmanager.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

import httpx
import pytest

from tests.conftest import load_yaml, require_tool, yaml_module

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "driftd.json"
RULES = GRAFANA / "prometheus" / "driftd.rules.yml"
PROVISIONING = GRAFANA / "provisioning"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
INSTANCE_FILTER = 'instance=~"$instance"'
ROWS = [
    "Traffic",
    "Model quality",
    "Drift",
    "Retraining",
    "Serving",
    "Labels",
    "Store and process",
    "Alert deliveries",
]
# What Grafana would put in place of its variables, for a query run straight at Prometheus.
RATE_INTERVAL = "1m"
RANGE = "5m"


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def panel_queries() -> list[tuple[str, str]]:
    """``(panel title / refId, expr)`` for every target of every panel."""
    return [(f"{p['title']} / {t['refId']}", t["expr"]) for p in panels() for t in p["targets"]]


def annotation_queries() -> dict[str, str]:
    return {
        a["name"]: a["expr"]
        for a in dashboard()["annotations"]["list"]
        if a.get("datasource", {}).get("type") == "prometheus"
    }


def grafana_alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(PROVISIONING / "alerting" / "driftd.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def prometheus_alerts() -> list[dict[str, Any]]:
    groups = load_yaml(RULES)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def substitute(expr: str, instance: str) -> str:
    return (
        expr.replace("$instance", instance)
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("$__range", RANGE)
    )


# -- structure ---------------------------------------------------------------------------


def test_the_dashboard_is_a_grafana_10_dashboard_with_a_stable_uid() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] == "driftd"
    assert board["title"] == "driftd"
    assert board["id"] is None  # provisioned dashboards must not carry a database id


def test_panel_ids_are_unique() -> None:
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) and i > 0 for i in ids)


def test_panels_fit_the_grid_and_never_overlap() -> None:
    rects = []
    for p in dashboard()["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] > 0 and g["h"] > 0, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
        rects.append((p["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
    for i, (a, ax0, ay0, ax1, ay1) in enumerate(rects):
        for b, bx0, by0, bx1, by1 in rects[i + 1 :]:
            overlap = ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1
            assert not overlap, f"{a!r} overlaps {b!r}"


def test_there_is_one_row_per_concern_in_order() -> None:
    rows = [p for p in dashboard()["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows] == ROWS
    assert all(not r["collapsed"] and r["gridPos"]["w"] == 24 for r in rows)
    # Each row holds at least one panel: the panels between it and the next row.
    tops = [r["gridPos"]["y"] for r in rows] + [math.inf]
    for top, bottom, row in zip(tops, tops[1:], rows, strict=False):
        inside = [p for p in panels() if top < p["gridPos"]["y"] < bottom]
        assert inside, row["title"]


def test_every_panel_and_query_uses_the_datasource_variable() -> None:
    for p in panels():
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t.get("datasource", DATASOURCE) == DATASOURCE, p["title"]


def test_every_query_has_an_expression_filtered_by_instance() -> None:
    for title, expr in panel_queries():
        assert expr.strip(), title
        assert INSTANCE_FILTER in expr, title
    for name, expr in annotation_queries().items():
        assert INSTANCE_FILTER in expr, name


def test_the_template_variables_pick_a_prometheus_and_its_driftd_instances() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query"
    assert instance["datasource"] == DATASOURCE
    assert "driftd_build_info" in instance["definition"]
    assert instance["includeAll"] and instance["multi"] and instance["allValue"] == ".*"


def test_every_panel_sets_a_unit() -> None:
    for p in panels():
        assert p["fieldConfig"]["defaults"].get("unit"), p["title"]


def test_quality_panels_draw_the_gate_threshold() -> None:
    """The live and gate scores are read against the threshold: it is drawn on the panel."""
    by_title = {p["title"]: p for p in panels()}
    for title in ("Live score vs gate threshold", "Gate score: champion vs candidate"):
        defaults = by_title[title]["fieldConfig"]["defaults"]
        steps = defaults["thresholds"]["steps"]
        assert [s["value"] for s in steps] == [None, 0.7], title
        assert defaults["custom"]["thresholdsStyle"]["mode"] != "off", title
    timeline = by_title["Detector state per feature"]
    assert timeline["type"] == "state-timeline"
    texts = {
        k: v["text"]
        for k, v in timeline["fieldConfig"]["defaults"]["mappings"][0]["options"].items()
    }
    assert texts == {"0": "stable", "1": "warning", "2": "drift"}


def test_deploys_and_rollbacks_are_annotated_from_the_version_and_rollback_series() -> None:
    queries = annotation_queries()
    assert set(queries) == {"Deploys", "Rollbacks"}
    assert "driftd_model_version" in queries["Deploys"]
    assert "driftd_rollbacks_total" in queries["Rollbacks"]
    assert "resets(driftd_model_version" in queries["Rollbacks"]
    for a in dashboard()["annotations"]["list"]:
        if a["name"] in queries:
            assert a["datasource"] == DATASOURCE


# -- provisioning ------------------------------------------------------------------------


def test_the_datasource_provisioning_defines_the_prometheus_the_alerts_use() -> None:
    config = load_yaml(PROVISIONING / "datasources" / "driftd.yml")
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    assert source["type"] == "prometheus"
    assert source["uid"] == "driftd-prometheus"
    assert source["url"].startswith("http")


def test_the_dashboard_provider_loads_the_dashboards_directory() -> None:
    config = load_yaml(PROVISIONING / "dashboards" / "driftd.yml")
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]


def test_grafana_alert_rules_follow_the_file_provisioning_format() -> None:
    config = load_yaml(PROVISIONING / "alerting" / "driftd.yml")
    assert config["apiVersion"] == 1
    uids = set()
    for group in config["groups"]:
        assert group["orgId"] == 1 and group["name"] and group["folder"] and group["interval"]
        for rule in group["rules"]:
            assert rule["uid"] not in uids
            uids.add(rule["uid"])
            refs = {d["refId"]: d for d in rule["data"]}
            assert rule["condition"] in refs, rule["title"]
            query = refs["A"]
            assert query["datasourceUid"] == "driftd-prometheus", rule["title"]
            assert query["model"]["expr"] and query["relativeTimeRange"]["from"] > 0
            condition = refs[rule["condition"]]
            assert condition["datasourceUid"] == "__expr__", rule["title"]
            assert condition["model"]["type"] in {"threshold", "math"}, rule["title"]
            assert condition["model"]["expression"] in refs, rule["title"]
            assert rule["noDataState"] in {"OK", "NoData", "Alerting", "KeepLast"}
            assert rule["execErrState"] in {"OK", "Error", "Alerting", "KeepLast"}
            assert {"summary", "description", "runbook"} <= set(rule["annotations"])
            assert rule["labels"]["severity"]


def test_grafana_alerts_match_the_prometheus_alerts() -> None:
    """The same alerts, with the same severities and pending periods, in both systems."""

    def seconds(duration: str | None) -> int:
        units = {"s": 1, "m": 60, "h": 3600}
        return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", duration or "0s"))

    grafana = {r["title"]: r for r in grafana_alert_rules()}
    prometheus = {r["alert"]: r for r in prometheus_alerts()}
    assert set(grafana) == set(prometheus)
    for name, rule in prometheus.items():
        assert grafana[name]["labels"]["severity"] == rule["labels"]["severity"], name
        assert seconds(grafana[name]["for"]) == seconds(rule.get("for")), name


# -- against a real Prometheus scraping the demo -----------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env() -> dict[str, str]:
    """The environment without proxies: every connection here is to loopback."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def eventually(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.5,
    detail: Callable[[], str] = str,
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{detail()}")
        time.sleep(interval)


class Service:
    """An external program on loopback, its output in a log file, stopped by ``stop()``."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log_path = log
        self._log: IO[bytes] = log.open("wb")
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=clean_env()
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, url: str, timeout: float = 30) -> None:
        with httpx.Client(timeout=2, trust_env=False) as client:

            def ready() -> bool:
                if self.proc.poll() is not None:
                    pytest.fail(f"{self.name} exited: {self.log_text()}")
                try:
                    return client.get(url).status_code == 200
                except httpx.TransportError:
                    return False

            eventually(ready, timeout, f"{self.name} at {url}", interval=0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@dataclass
class Demo:
    """``driftd demo`` in a subprocess; stderr is drained by a thread (it must never fill)."""

    state: Path
    proc: subprocess.Popen[str] = field(init=False)
    port: int | None = None
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def start(self, duration: float = 600) -> Demo:
        argv = [sys.executable, "-m", "driftd", "demo", "--port", "0"]
        argv += ["--state-dir", str(self.state), "--duration", str(duration)]
        # The gate's warm-up latency rule (250 ms) can refuse even the first model on a loaded
        # CI machine, and then the demo has no model at all; latency is not under test here.
        env = clean_env() | {"DRIFTD_GATE_MAX_LATENCY_MS": "10000"}
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        eventually(self._listening, 60, "the demo daemon to listen", interval=0.05)
        return self

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m and self.port is None:
                self.port = int(m.group(1))

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"demo exited with {self.proc.returncode}: {''.join(self.lines[-30:])}")
        return self.port is not None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode


def start_prometheus(
    tmp: Path, target: str, rules: Path, alertmanager: str | None = None
) -> tuple[Service, str]:
    binary = require_tool("prometheus")
    port = free_port()
    config = tmp / "prometheus.yml"
    alerting = ""
    if alertmanager:
        alerting = f"""
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["{alertmanager}"]
"""
    config.write_text(
        f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: driftd
    static_configs:
      - targets: ["{target}"]
{alerting}"""
    )
    service = Service(
        "prometheus",
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        tmp / "prometheus.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        service.wait_ready(url + "/-/ready")
    except BaseException:
        service.stop()
        raise
    return service, url


class Traffic:
    """HTTP traffic the demo source does not make: predictions over HTTP (the latency
    histogram observes ``POST /v1/predict`` only) and, every tenth request, a refused record."""

    INSTANCE: ClassVar[dict[str, Any]] = {
        "salary": 65000,
        "commission": 20000,
        "age": 41,
        "elevel": "2",
        "car": "5",
        "zipcode": "3",
        "hvalue": 300000,
        "hyears": 12,
        "loan": 150000,
    }

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=10, trust_env=False)
        self.stop_event = threading.Event()
        self.statuses: list[int] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        n = 0
        while not self.stop_event.wait(0.2):
            n += 1
            try:
                if n % 10 == 0:
                    r = self.client.post("/v1/records", json=[{"features": {"salary": "high"}}])
                else:
                    r = self.client.post("/v1/predict", json={"instances": [self.INSTANCE]})
                self.statuses.append(r.status_code)
            except httpx.TransportError:
                self.statuses.append(0)

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(15)
        self.client.close()


@dataclass
class Stack:
    demo: Demo
    prometheus: str
    started: float
    client: httpx.Client

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        params = {"query": expr, "time": str(at or time.time())}
        body: dict[str, Any] = self.client.get(
            self.prometheus + "/api/v1/query", params=params
        ).json()
        return body

    def query_range(self, expr: str, step: float = 2) -> dict[str, Any]:
        params = {
            "query": expr,
            "start": str(self.started),
            "end": str(time.time()),
            "step": str(step),
        }
        response = self.client.get(self.prometheus + "/api/v1/query_range", params=params)
        body: dict[str, Any] = response.json()
        return body


def finite_points(body: dict[str, Any]) -> int:
    result = body["data"]["result"]
    if body["data"]["resultType"] == "vector":
        return sum(math.isfinite(float(s["value"][1])) for s in result)
    return sum(math.isfinite(float(v)) for s in result for _, v in s["values"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The demo daemon, scraped by Prometheus with the rules loaded, until it has retrained.

    The demo bootstraps a first model, then its stream changes concept after 6,000 records;
    the monitor raises an alarm and the retrainer deploys version 2 or later. The fixture
    waits for that deploy, then for a few more scrapes and rule evaluations.
    """
    require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("grafana")
    demo = Demo(tmp / "state").start()
    cleanup: list[Callable[[], Any]] = [demo.stop]
    try:
        prometheus, url = start_prometheus(tmp, demo.target, RULES)
        cleanup.insert(0, prometheus.stop)
        client = httpx.Client(timeout=10, trust_env=False)
        cleanup.insert(0, client.close)
        started = time.time()

        def redeployed() -> bool:
            if demo.proc.poll() is not None:
                pytest.fail(f"demo exited: {''.join(demo.lines[-30:])}")
            events = client.get(
                f"http://{demo.target}/v1/events", params={"kind": "deploy", "limit": 10}
            ).json()["events"]
            return any((e.get("version") or 0) >= 2 for e in events)

        eventually(
            redeployed,
            120,
            "the demo to retrain and deploy a second model",
            1,
            lambda: "".join(demo.lines[-30:]),
        )
        # Only now: unlabelled HTTP traffic from outside the stream would disturb the demo's
        # drift and retrain cycle.
        traffic = Traffic(f"http://{demo.target}")
        cleanup.insert(0, traffic.close)
        eventually(
            lambda: traffic.statuses.count(200) >= 10 and 422 in traffic.statuses,
            30,
            "predictions and a refused record over HTTP",
        )
        # Let Prometheus scrape all of it and evaluate every rule on it.
        time.sleep(4)
        yield Stack(demo, url, started, client)
    finally:
        for step in cleanup:
            step()


@pytest.mark.external
def test_prometheus_scrapes_the_demo_and_lists_it_for_the_instance_variable(
    stack: Stack,
) -> None:
    assert stack.query('up{job="driftd"}')["data"]["result"][0]["value"][1] == "1"
    response = stack.client.get(
        stack.prometheus + "/api/v1/label/instance/values",
        params={"match[]": "driftd_build_info"},
    )
    assert response.json()["data"] == [stack.demo.target]


@pytest.mark.external
@pytest.mark.parametrize("instance", ["all", "one"])
def test_every_panel_query_returns_data_for_the_demo(stack: Stack, instance: str) -> None:
    """Each panel shows something: at least one finite point over the demo's run, with the
    instance variable at All (``.*``) and at the demo's own instance."""
    value = ".*" if instance == "all" else stack.demo.target
    errors, empty = [], []
    for title, expr in panel_queries():
        body = stack.query_range(substitute(expr, value))
        if body["status"] != "success":
            errors.append(f"{title}: {body.get('error')}")
        elif finite_points(body) == 0:
            empty.append(title)
    assert errors == []
    assert empty == []


@pytest.mark.external
def test_annotation_queries_evaluate_and_mark_the_demo_deploy(stack: Stack) -> None:
    queries = annotation_queries()
    for name, expr in queries.items():
        body = stack.query_range(substitute(expr, ".*"), step=1)
        assert body["status"] == "success", (name, body.get("error"))
    deploys = stack.query_range(substitute(queries["Deploys"], ".*"), step=1)
    versions = {s["metric"]["version"] for s in deploys["data"]["result"]}
    assert versions - {"1"}, "the redeploy was not annotated"


@pytest.mark.external
def test_every_grafana_alert_query_evaluates(stack: Stack) -> None:
    for rule in grafana_alert_rules():
        for data in rule["data"]:
            if data["datasourceUid"] == "__expr__":
                continue
            body = stack.query(data["model"]["expr"])
            assert body["status"] == "success", (rule["title"], body.get("error"))


@pytest.mark.external
def test_every_rule_evaluates_healthy_in_prometheus(stack: Stack) -> None:
    def rules() -> list[dict[str, Any]]:
        body = stack.client.get(stack.prometheus + "/api/v1/rules").json()
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]

    loaded = rules()
    names = {r["name"] for r in loaded}
    assert {r["alert"] for r in prometheus_alerts()} <= names
    assert len(loaded) == sum(len(g["rules"]) for g in load_yaml(RULES)["groups"])
    for rule in loaded:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        assert not rule["lastEvaluation"].startswith("0001-"), rule["name"]
        body = stack.query(rule["query"])
        assert body["status"] == "success", (rule["name"], body.get("error"))
    # Every recorded series exists for the demo: the dashboard reads them.
    for rule in loaded:
        if rule["type"] == "recording":
            assert stack.query(rule["name"])["data"]["result"], rule["name"]


@pytest.mark.external
def test_the_demo_drift_fires_the_drift_alarm_and_the_watchdog_always_fires(
    stack: Stack,
) -> None:
    def firing() -> set[tuple[str, str]]:
        body = stack.client.get(stack.prometheus + "/api/v1/alerts").json()
        return {
            (a["labels"]["alertname"], a["labels"].get("instance", ""))
            for a in body["data"]["alerts"]
            if a["state"] == "firing"
        }

    alerts = firing()
    assert ("DriftdWatchdog", "") in alerts
    assert ("DriftdDriftAlarm", stack.demo.target) in alerts
    assert ("DriftdDown", stack.demo.target) not in alerts


# -- Prometheus into a real Alertmanager -------------------------------------------------


@pytest.mark.external
def test_a_stopped_daemon_reaches_alertmanager_as_driftd_down(tmp_path: Path) -> None:
    """Prometheus fires DriftdDown for a daemon that was stopped, into a real Alertmanager.

    The rule under test is a copy of the shipped DriftdDown with ``for: 0s``, so that the test
    takes seconds rather than the real minute; the real ``for: 1m`` is held by the promtool
    unit tests. Everything else (expression, labels, annotations) is the shipped rule.
    """
    yaml = yaml_module()
    binary = require_tool("prometheus-alertmanager")
    require_tool("prometheus")
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group["rules"] = [r for r in group["rules"] if r.get("alert") == "DriftdDown"]
        for rule in group["rules"]:
            rule["for"] = "0s"
    rules["groups"] = [g for g in rules["groups"] if g["rules"]]
    test_rules = tmp_path / "down.rules.yml"
    test_rules.write_text(yaml.safe_dump(rules))
    shipped = next(r for r in prometheus_alerts() if r["alert"] == "DriftdDown")

    am_port = free_port()
    am_config = tmp_path / "alertmanager.yml"
    am_config.write_text(
        "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n",
    )
    services: list[Any] = []
    try:
        alertmanager = Service(
            "alertmanager",
            [
                binary,
                f"--config.file={am_config}",
                f"--storage.path={tmp_path / 'am'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            tmp_path / "alertmanager.log",
        )
        services.append(alertmanager)
        am_url = f"http://127.0.0.1:{am_port}"
        alertmanager.wait_ready(am_url + "/-/ready")
        demo = Demo(tmp_path / "state").start(duration=120)
        services.append(demo)
        prometheus, url = start_prometheus(
            tmp_path, demo.target, test_rules, alertmanager=f"127.0.0.1:{am_port}"
        )
        services.append(prometheus)
        with httpx.Client(timeout=5, trust_env=False) as client:

            def up() -> bool:
                body = client.get(url + "/api/v1/query", params={"query": "up"}).json()
                return any(s["value"][1] == "1" for s in body["data"]["result"])

            eventually(up, 30, "Prometheus to scrape the daemon")
            assert demo.stop() == 0

            def down_alerts() -> list[dict[str, Any]]:
                response = client.get(
                    am_url + "/api/v2/alerts", params={"filter": 'alertname="DriftdDown"'}
                )
                alerts: list[dict[str, Any]] = response.json()
                return alerts

            (alert,) = eventually(down_alerts, 60, "DriftdDown in Alertmanager")
        assert alert["labels"] == {
            "alertname": "DriftdDown",
            "instance": demo.target,
            "job": "driftd",
            "severity": "critical",
        }
        assert alert["annotations"]["summary"] == f"driftd {demo.target} is down"
        assert alert["annotations"]["runbook"] == shipped["annotations"]["runbook"]
        assert alert["status"]["state"] == "active"
    finally:
        for service in reversed(services):
            service.stop()
