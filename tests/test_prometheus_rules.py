"""The Prometheus rules in ``grafana/prometheus/``: valid for promtool, unit-tested, documented.

``promtool check rules`` validates the file; ``promtool test rules`` runs the unit tests in
``grafana/prometheus/tests/`` (fake series in, expected alerts and recorded samples out). The
remaining tests hold every alert to the conventions operators rely on: a severity, and a
summary, description and runbook that points at its section of ``docs/observability.md``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import load_yaml, require_tool

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "grafana" / "prometheus" / "driftd.rules.yml"
RULE_TESTS = sorted((ROOT / "grafana" / "prometheus" / "tests").glob("*.yml"))
DOCS = ROOT / "docs" / "observability.md"


def alerts() -> list[dict[str, Any]]:
    groups = load_yaml(RULES)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_tool("promtool")
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )


def test_promtool_check_rules_accepts_the_rules_file() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    assert RULE_TESTS, "no promtool unit tests found"
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr


def test_every_alert_fires_in_at_least_one_unit_test() -> None:
    """An alert whose firing no promtool test shows could have a dead expression."""
    fired: set[str] = set()
    for path in RULE_TESTS:
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fired == set()


def test_every_alert_has_a_severity_summary_description_and_runbook() -> None:
    docs = DOCS.read_text()
    for rule in alerts():
        name = rule["alert"]
        assert name.startswith("Driftd"), name
        assert rule["labels"]["severity"] in {"critical", "warning", "info", "none"}, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook"}, name
        assert all(str(v).strip() for v in annotations.values()), name
        anchor = f"docs/observability.md#{name.lower()}"
        assert anchor in annotations["runbook"], name
        # The runbook link lands on a heading of that name in the docs.
        assert re.search(rf"^#+ {name}$", docs, re.MULTILINE), name


def test_every_threshold_is_marked_for_operators() -> None:
    """Each alert carries a ``THRESHOLD:`` comment so that ``grep THRESHOLD`` finds them all."""
    text = RULES.read_text()
    blocks = re.split(r"^      - alert: ", text, flags=re.MULTILINE)[1:]
    unmarked = [
        b.split("\n", 1)[0] for b in blocks if "THRESHOLD:" not in b and "vector(1)" not in b
    ]
    assert unmarked == []


def test_recording_rules_follow_the_level_metric_operations_convention() -> None:
    groups = load_yaml(RULES)["groups"]
    records = [rule["record"] for group in groups for rule in group["rules"] if "record" in rule]
    assert records
    for name in records:
        level, metric, operations = name.split(":")
        assert level.startswith("instance"), name
        assert metric.startswith("driftd_"), name
        assert operations, name
