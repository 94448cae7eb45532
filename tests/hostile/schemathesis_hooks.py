"""Schemathesis hooks for tests/test_fuzz.py, loaded by the CLI through ``SCHEMATHESIS_HOOKS``.

``POST /v1/predict`` takes ``ids`` with one entry per instance. JSON Schema cannot say that two
arrays have the same length, so a schema-valid ("positive") case may carry a mismatched ``ids``
and be refused with a 422, which the positive-data check would report as a false failure. Such
a positive case is sent without ``ids`` instead. Likewise a timestamp is at most the receiving
clock plus the allowed skew, which no static schema can state: a positive case's later
timestamps are sent as the present, and its class probabilities (which must sum to 1 and name
the serving model's classes) are left out. Negative cases are left alone: the daemon must refuse
them whatever they hold.

The daemon under test has one token per scope; each operation's ``security`` in the document
names its scope, and :class:`ScopeToken` sends that scope's token (from ``DRIFTD_FUZZ_TOKENS``,
a JSON object of scope -> token), so that cases reach the handlers. Schemathesis' own
``ignored_auth`` check then removes and spoils the token to hold the daemon to its refusals.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import schemathesis

BATCHES = ("/v1/records", "/v1/labels")
TOKENS: dict[str, str] = json.loads(os.environ.get("DRIFTD_FUZZ_TOKENS", "{}"))  # set by the test


@schemathesis.auth(refresh_interval=None, retry_on=[])
class ScopeToken:
    """The token of the scope the operation declares; none for an open operation."""

    def get(self, case: Any, context: Any) -> str | None:
        for requirement in context.operation.definition.raw.get("security", []):
            for scope in requirement.get("bearer", []):
                return TOKENS[scope]
        return None

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    meta = getattr(case, "meta", None)
    positive = meta is not None and meta.generation.mode.is_positive
    body = case.body
    if (
        positive
        and case.operation.path == "/v1/predict"
        and isinstance(body, dict)
        and isinstance(body.get("ids"), list)
        and len(body["ids"]) != len(body.get("instances") or [])
    ):
        case.body = {k: v for k, v in body.items() if k != "ids"}
    if positive and case.operation.path in BATCHES and isinstance(body, list):
        now = time.time()
        for item in body:
            if isinstance(item, dict) and isinstance(item.get("timestamp"), int | float):
                item["timestamp"] = min(item["timestamp"], now)
            if isinstance(item, dict):
                item.pop("proba", None)
    return case
