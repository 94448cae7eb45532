"""The HTTP API's endpoints (v1), one module-level function each, over the daemon's parts.

An endpoint reads what it works with from ``request.app.state.api`` (:class:`Api`), set once by
:func:`~driftd.service.app.create_app`; the parts exist once the daemon has started (the
lifespan runs before the first request). Work that touches the store or the monitor runs on the
engine's worker; an endpoint holds no business logic.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.background import BackgroundTask

from driftd.errors import IntegrityError
from driftd.ingest.validation import FieldError, Validators
from driftd.metrics import Metrics
from driftd.models.serving import WarmupError
from driftd.service.body import Bodies
from driftd.service.engine import INLINE_INSTANCES, Engine, NoModel
from driftd.service.http import ApiError, RollbackRequest, error_response, json_response
from driftd.service.parts import Parts

__all__ = [
    "Api",
    "events",
    "healthz",
    "labels",
    "models",
    "openapi",
    "predict",
    "prometheus",
    "readyz",
    "records",
    "retrain",
    "rollback",
    "status",
    "swagger",
]


@dataclass(frozen=True, slots=True)
class Api:
    """What the endpoints work with: bodies, metrics, and the parts (``None`` until the daemon
    has started). Tokens are checked before an endpoint runs (:mod:`driftd.service.auth`)."""

    bodies: Bodies
    metrics: Metrics
    parts: Callable[[], Parts | None]


def _api(request: Request) -> Api:
    api: Api = request.app.state.api
    return api


def _parts(api: Api) -> Parts:
    parts = api.parts()
    if parts is None:
        raise ApiError(503, "starting", "the daemon is still starting")
    return parts


async def _on_worker(parts: Parts, fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.wrap_future(parts.engine.submit(fn, *args))


# -- traffic -----------------------------------------------------------------------------------
async def predict(request: Request) -> Response:
    start = time.perf_counter()
    api = _api(request)
    bodies = api.bodies
    kind = bodies.media_type(request, ndjson=False)
    body = bodies.parse(bodies.validators.predict, await bodies.read(request), kind)
    instances, ids = body["instances"], body.get("ids")
    bodies.check_batch(len(instances))
    if ids is not None and len(ids) != len(instances):
        got = f"got {len(ids)} ids for {len(instances)} instances"
        raise ApiError(
            422,
            "invalid_record",
            "ids must have one entry per instance",
            [FieldError(None, "ids", got, "length")],
        )
    parts = _parts(api)
    engine, now = parts.engine, time.time()
    here = len(instances) <= INLINE_INSTANCES
    try:
        # Answered once committed, in a group with the requests waiting then: here, after
        # the loop has read the ones that arrived together, when the engine is idle; else on
        # the worker. The monitor sees them after the answer.
        answer = engine.submit_predict(instances, ids, now, here=here)
        if here:
            try:
                await asyncio.sleep(0)  # the requests read with this one join its group
            finally:  # cancelled or not, the group is taken (here or by the worker)
                engine.settle_here()
        result = answer.result() if answer.done() else await asyncio.wrap_future(answer)
    except NoModel:
        raise ApiError(
            503, "no_model", parts.no_model_reason(), headers={"Retry-After": "5"}
        ) from None
    api.metrics.predict_duration.observe(time.perf_counter() - start)
    return json_response(
        {
            "predictions": result.predictions,
            "ids": result.ids,
            "model_version": result.version,
            "duplicates": result.duplicates,
        },
        background=BackgroundTask(_monitor_soon, engine),
    )


async def _monitor_soon(engine: Engine) -> None:
    """After the answer is sent, on the event loop itself: a plain function in a
    ``BackgroundTask`` would go to a thread pool."""
    engine.monitor_soon()


async def records(request: Request) -> Response:
    result = await _store(request, lambda v: v.records, lambda e: e.add_records, "records")
    first = result.inserted_idx[0] if result.inserted_idx else None
    return json_response(
        {"accepted": result.accepted, "duplicates": result.duplicates, "first_index": first}
    )


async def labels(request: Request) -> Response:
    return json_response(await _store(request, lambda v: v.labels, lambda e: e.add_labels))


async def _store(
    request: Request,
    adapter: Callable[[Validators], Any],
    ingest: Callable[[Engine], Callable[..., Any]],
    *args: Any,
) -> Any:
    """Read a batch (JSON or NDJSON), then parse it and hand it to the engine in one task on
    its worker; ``args`` and the time follow the batch."""
    api = _api(request)
    bodies = api.bodies
    kind = bodies.media_type(request, ndjson=True)
    body = await bodies.read(request)
    parts = _parts(api)
    then = ingest(parts.engine)
    chosen = adapter(bodies.validators)
    parse = functools.partial(bodies.parsed, chosen, body, kind, then, *args, now=time.time())
    return await _on_worker(parts, parse)


# -- operators ---------------------------------------------------------------------------------
def _leader(parts: Parts) -> None:
    """Refuse an operator's change on a standby: the policy and the registry are the leader's."""
    if not parts.role.leading:
        raise ApiError(
            409, "not_leader", "this daemon is a standby; send this to its model's leader"
        )


async def retrain(request: Request) -> Response:
    api = _api(request)
    parts = _parts(api)
    _leader(parts)
    decision = await asyncio.to_thread(parts.retrainer.request, "operator", operator=True)
    return json_response({"job": decision.job_id, "outcome": decision.outcome}, 202)


async def rollback(request: Request) -> Response:
    api = _api(request)
    parts = _parts(api)
    _leader(parts)
    body = await api.bodies.read(request)
    version = None
    if body.strip():
        api.bodies.media_type(request, ndjson=False)
        try:
            version = RollbackRequest.model_validate_json(body).version
        except ValidationError as exc:
            errors = [
                FieldError(None, ".".join(map(str, e["loc"])) or "(body)", e["msg"], e["type"])
                for e in exc.errors(include_input=False, include_url=False)
            ]
            code = 400 if errors and errors[0].type == "json_invalid" else 422
            raise ApiError(code, "invalid_request", "invalid rollback request", errors) from None
    try:
        done = await asyncio.to_thread(parts.retrainer.rollback, version, reason="operator")
    except (ValueError, IntegrityError, WarmupError) as exc:
        raise ApiError(409, "rollback_refused", str(exc)) from None
    return json_response(done)


# -- reads -------------------------------------------------------------------------------------
async def status(request: Request) -> Response:
    return json_response(await asyncio.to_thread(_parts(_api(request)).status))


async def models(request: Request) -> Response:
    return json_response(await asyncio.to_thread(_parts(_api(request)).models.models))


async def events(
    request: Request,
    kind: str | None = Query(None, max_length=64, description="Only events of this kind"),
    before: int | None = Query(
        # SQLite integers are 64-bit; a larger value must be a 422, not an overflow (500).
        None,
        ge=1,
        le=2**63 - 1,
        description="Only events with a smaller id (paging)",
    ),
    limit: int = Query(100, ge=1, le=1000),
) -> Response:
    store = _parts(_api(request)).store
    rows = await asyncio.to_thread(store.events, kind=kind, before=before, limit=limit)
    items = [e.as_dict() for e in rows]
    return json_response(
        {"events": items, "next_before": items[-1]["id"] if len(items) == limit else None}
    )


async def openapi(request: Request) -> Response:
    return json_response(request.app.openapi())


async def swagger(request: Request) -> Response:
    return get_swagger_ui_html(openapi_url="/openapi.json", title="driftd - API")


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready while a model serves. A broker source that is not connected makes the answer
    ``degraded`` with the source's state, still 200: the daemon serves predictions and HTTP
    ingest, the broker keeps the messages until it is back, and every replica of a model
    shares the broker, so failing readiness on its outage would take all of them out of the
    load balancer at once and turn a broker outage into a prediction outage."""
    parts = _parts(_api(request))
    live = parts.models.current
    if live is None:  # not a refusal of anything sent: not counted as one
        return error_response(ApiError(503, "no_model", parts.no_model_reason()))
    body: dict[str, Any] = {"status": "ready", "model_version": live.version}
    if parts.sources:
        states = parts.source_states()
        body["sources"] = states
        if not all(s.get("connected") for s in states.values()):
            body["status"] = "degraded"
    return json_response(body)


async def prometheus(request: Request) -> Response:
    data = await asyncio.to_thread(generate_latest, _api(request).metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
