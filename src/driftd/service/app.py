"""The HTTP API (v1): FastAPI routes over the engine.

Bodies are read here, not by FastAPI, so that the size cap counts the bytes actually received
(a chunked upload cannot slip past it) and so that records are parsed and validated in one pass
by the schema's compiled validators. Every refusal is a JSON body naming what was wrong, with a
4xx status, and is counted in ``driftd_records_rejected_total{reason}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from driftd import __version__
from driftd.errors import IntegrityError
from driftd.ingest.columns import ColumnDecoder
from driftd.ingest.validation import FieldError, InvalidInput, Validators
from driftd.models.serving import WarmupError
from driftd.retrain.retrainer import Retrainer
from driftd.service.engine import Engine, NoModel

__all__ = ["ApiError", "create_app"]

log = logging.getLogger(__name__)

JSON_TYPES = ("application/json",)
READ_TIMEOUT_SECONDS = 30.0  # a whole request body must arrive within this
READ_IDLE_SECONDS = 10.0  # and with no longer silence than this
_CLOSE = {"Connection": "close"}
NDJSON_TYPES = (
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/x-jsonlines",
)


class ApiError(Exception):
    """A refusal with its status, a short code (also the metric's reason) and a message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []
        self.headers = headers


# -- documented bodies (OpenAPI) ---------------------------------------------------------------
class FieldErrorBody(BaseModel):
    index: int | None = Field(
        description="Index of the bad record in the batch (null: the body as a whole)"
    )
    field: str = Field(description="The offending field, e.g. 'features.age' or 'label'")
    message: str
    type: str


class ErrorBody(BaseModel):
    error: str = Field(
        description="A short code, e.g. invalid_record, body_too_large, unauthorized"
    )
    message: str
    errors: list[FieldErrorBody] = Field(default_factory=list)


class PredictResponse(BaseModel):
    predictions: list[int | str | float]
    ids: list[str] = Field(
        description="Ids under which the predictions are stored; send labels for them"
    )
    model_version: int
    duplicates: list[str] = Field(default_factory=list)


class IngestResponse(BaseModel):
    accepted: int
    duplicates: list[str] = Field(
        description="Ids already stored; an idempotent re-send changes nothing"
    )
    first_index: int | None = None


class LabelsResponse(BaseModel):
    accepted: int
    joined: int = Field(description="Labels that met their stored prediction now")
    pending: int = Field(description="Labels kept until their record arrives")
    duplicates: list[str]


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Malformed JSON (invalid UTF-8, nesting too deep, a number out of range),"
        " or the client closed the connection mid-body",
        401: "Missing or wrong bearer token",
        408: "The body did not arrive in time (the connection is closed)",
        413: "Body or batch over the configured cap (the connection is closed)",
        415: "Unsupported content type",
        422: "Invalid records (a key given twice included): every bad record and field is listed",
    }.items()
}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(data, allow_nan=False, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _error_response(exc: ApiError) -> Response:
    body = {"error": exc.code, "message": exc.message, "errors": [e.as_dict() for e in exc.errors]}
    return _json(body, exc.status, exc.headers)


class RetrainAccepted(BaseModel):
    job: str | None = Field(
        description="The job that will run (a waiting job absorbs new requests)"
    )
    outcome: str = Field(description="queued, or merged into the waiting job")


class RollbackRequest(BaseModel):
    version: int | None = Field(None, ge=1, description="Version to serve (default: the previous)")


class RollbackDone(BaseModel):
    version: int
    previous: int | None
    reason: str


def create_app(
    engine: Engine,
    *,
    lifespan: Any = None,
    retrainer: Callable[[], Retrainer | None] = lambda: None,
    read_timeout_seconds: float = READ_TIMEOUT_SECONDS,
    read_idle_seconds: float = READ_IDLE_SECONDS,
) -> FastAPI:
    config = engine.config
    server = config.server
    metrics = engine.metrics
    docs = engine.validators
    # Parsing stops at the batch cap; the documented schema leaves the cap to the 413 response.
    validators = Validators(docs.schema, max_items=server.max_batch_size)
    columns = ColumnDecoder.for_schema(docs.schema, max_items=server.max_batch_size)

    app = FastAPI(
        title="driftd",
        version=__version__,
        description="Serve a model, watch its traffic for drift, retrain and redeploy it.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )

    def reject(reason: str) -> None:
        metrics.rejected.labels(reason).inc()

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        reject(exc.code)
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def query_error(_: Request, exc: RequestValidationError) -> Response:
        # Query parameters only (bodies are validated by the schema); never echo the input.
        errors = [
            FieldError(
                None,
                ".".join(str(p) for p in e["loc"][1:]) or "(query)",
                str(e["msg"]),
                str(e["type"]),
            )
            for e in exc.errors()
        ]
        reject("invalid_parameter")
        return _error_response(
            ApiError(422, "invalid_parameter", "invalid query parameter", errors)
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        reject(code)
        # Keep Starlette's headers: a 405 must carry ``Allow`` (RFC 9110).
        return _json(
            {"error": code, "message": str(exc.detail), "errors": []},
            exc.status_code,
            dict(exc.headers or {}),
        )

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> Response:
        log.error("unhandled error in a request", exc_info=exc)
        return _json(
            {"error": "internal", "message": "internal error; see the daemon's log", "errors": []},
            500,
        )

    def check_token(request: Request) -> None:
        if server.token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.encode(), server.token.encode()
        ):
            raise ApiError(
                401,
                "unauthorized",
                "a valid bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def media_type(request: Request, *, ndjson: bool) -> str:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in JSON_TYPES or (ndjson and kind in NDJSON_TYPES):
            return kind
        allowed = "application/json" + (" or application/x-ndjson" if ndjson else "")
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content type {kind or '(none)'!r} is not supported; send {allowed}",
        )

    async def read_body(request: Request) -> bytearray:
        """The body, at most ``max_body_bytes`` of it held at any time (one buffer, no joined
        copy), received within ``read_timeout_seconds`` and with no pause over
        ``read_idle_seconds``: uvicorn times out neither, so a client sending a byte a second
        would otherwise hold its request open forever. A refusal mid-body closes the
        connection rather than reading (and discarding) the rest."""
        limit = server.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(
                413,
                "body_too_large",
                f"body of {declared} bytes is over the {limit}-byte cap",
                headers=_CLOSE,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + read_timeout_seconds
        body = bytearray()
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + read_idle_seconds)) as cm:
                async for chunk in request.stream():
                    if len(body) + len(chunk) > limit:
                        msg = f"body is over the {limit}-byte cap"
                        raise ApiError(413, "body_too_large", msg, headers=_CLOSE)
                    body += chunk
                    cm.reschedule(min(deadline, loop.time() + read_idle_seconds))
        except TimeoutError:
            whole = loop.time() >= deadline
            raise ApiError(
                408,
                "read_timeout",
                f"the body did not arrive within {read_timeout_seconds:g} s"
                if whole
                else f"the client sent nothing for {read_idle_seconds:g} s",
                headers=_CLOSE,
            ) from None
        except ClientDisconnect:
            raise ApiError(
                400, "client_disconnect", "the client closed the connection mid-body"
            ) from None
        return body

    def parse(adapter: Any, body: bytes | bytearray, kind: str) -> Any:
        if adapter is validators.records and columns is not None and kind in JSON_TYPES:
            decoded = columns.decode(body)
            if decoded is not None:
                return decoded
        try:
            if kind in NDJSON_TYPES:
                return _ndjson(adapter, body)
            return validators.parse(adapter, body)
        except InvalidInput as exc:
            if exc.errors and exc.errors[0].type == "too_long":
                cap = server.max_batch_size
                msg = f"batch is over the {cap}-record cap"
                raise ApiError(413, "batch_too_large", msg) from None
            if exc.malformed:
                raise ApiError(400, "malformed_json", exc.errors[0].message, exc.errors) from None
            raise ApiError(422, "invalid_record", str(exc), exc.errors) from None

    def _ndjson(list_adapter: Any, body: bytes | bytearray) -> list[Any]:
        item = validators.record if list_adapter is validators.records else validators.label_record
        return validators.parse_ndjson(item, body)

    def check_batch(n: int) -> None:
        if n > server.max_batch_size:
            raise ApiError(
                413,
                "batch_too_large",
                f"batch of {n} records is over the {server.max_batch_size}-record cap",
            )
        if n == 0:
            raise ApiError(
                422,
                "invalid_record",
                "empty batch",
                [FieldError(None, "(body)", "empty batch", "too_short")],
            )

    async def on_worker(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(engine.worker, fn, *args)

    def parsed(adapter: Any, body: bytes, kind: str, then: Callable[..., Any], *args: Any) -> Any:
        """Parse and validate a batch, then ``then(batch, *args)``, in one task on the ingest
        worker: one thread hop per request, and the event loop never spends the milliseconds
        a large batch takes to parse."""
        batch = parse(adapter, body, kind)
        check_batch(len(batch))
        return then(batch, *args)

    def body_doc(adapter: Any, *, ndjson: bool) -> dict[str, Any]:
        schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
        if schema.get("type") == "array":
            schema["minItems"] = 1  # an empty batch is refused (check_batch); say so
        content = {"application/json": {"schema": schema}}
        if ndjson:
            content["application/x-ndjson"] = {
                "schema": {"type": "string", "description": "One JSON object per line"}
            }
        return {"requestBody": {"required": True, "content": content}}

    # -- routes ----------------------------------------------------------------------------
    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses={**_ERRORS, 503: {"model": ErrorBody, "description": "No model is serving yet"}},
        openapi_extra=body_doc(docs.predict, ndjson=False),
        summary="Predict one or many instances; inputs and predictions are stored for monitoring",
    )
    async def predict(request: Request) -> Response:
        start = time.perf_counter()
        check_token(request)
        kind = media_type(request, ndjson=False)
        body = parse(validators.predict, await read_body(request), kind)
        instances = body["instances"]
        ids = body.get("ids")
        check_batch(len(instances))
        if ids is not None and len(ids) != len(instances):
            raise ApiError(
                422,
                "invalid_record",
                "ids must have one entry per instance",
                [
                    FieldError(
                        None, "ids", f"got {len(ids)} ids for {len(instances)} instances", "length"
                    )
                ],
            )
        try:
            result = await on_worker(engine.predict, instances, ids, time.time())
        except NoModel as exc:
            metrics.rejected.labels("no_model").inc()
            return _json(
                {"error": "no_model", "message": str(exc), "errors": []}, 503, {"Retry-After": "5"}
            )
        metrics.predict_duration.observe(time.perf_counter() - start)
        return _json(
            {
                "predictions": result.predictions,
                "ids": result.ids,
                "model_version": result.version,
                "duplicates": result.duplicates,
            }
        )

    @app.post(
        "/v1/records",
        response_model=IngestResponse,
        responses=_ERRORS,
        openapi_extra=body_doc(docs.records, ndjson=True),
        summary="Observed traffic from elsewhere: features, optional prediction, optional label",
    )
    async def records(request: Request) -> Response:
        check_token(request)
        kind = media_type(request, ndjson=True)
        body = await read_body(request)
        result = await on_worker(
            parsed, validators.records, body, kind, engine.add_records, "records", time.time()
        )
        return _json(
            {
                "accepted": result.accepted,
                "duplicates": result.duplicates,
                "first_index": result.inserted_idx[0] if result.inserted_idx else None,
            }
        )

    @app.post(
        "/v1/labels",
        response_model=LabelsResponse,
        responses=_ERRORS,
        openapi_extra=body_doc(docs.labels, ndjson=True),
        summary="Delayed labels by record or prediction id",
    )
    async def labels(request: Request) -> Response:
        check_token(request)
        kind = media_type(request, ndjson=True)
        body = await read_body(request)
        return _json(
            await on_worker(parsed, validators.labels, body, kind, engine.add_labels, time.time())
        )

    def need_retrainer() -> Retrainer:
        loop = retrainer()
        if loop is None:
            raise ApiError(503, "starting", "the daemon is still starting")
        return loop

    @app.post(
        "/v1/retrain",
        status_code=202,
        response_model=RetrainAccepted,
        responses={401: _ERRORS[401], 503: {"model": ErrorBody}},
        summary="Ask for a retrain now (single flight: merged into a waiting job if there is one)",
    )
    async def retrain(request: Request) -> Response:
        check_token(request)
        loop = need_retrainer()
        decision = await asyncio.to_thread(loop.request, "operator", operator=True)
        return _json({"job": decision.job_id, "outcome": decision.outcome}, 202)

    @app.post(
        "/v1/rollback",
        response_model=RollbackDone,
        responses={
            **_ERRORS,
            409: {
                "model": ErrorBody,
                "description": "Nothing to roll back to, or it fails to load",
            },
        },
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": RollbackRequest.model_json_schema()}},
            }
        },
        summary="Serve the previous (or a named) version again",
    )
    async def rollback(request: Request) -> Response:
        check_token(request)
        loop = need_retrainer()
        body = await read_body(request)
        version = None
        if body.strip():
            media_type(request, ndjson=False)
            try:
                version = RollbackRequest.model_validate_json(body).version
            except ValidationError as exc:
                errors = [
                    FieldError(None, ".".join(map(str, e["loc"])) or "(body)", e["msg"], e["type"])
                    for e in exc.errors(include_input=False, include_url=False)
                ]
                code = 400 if errors and errors[0].type == "json_invalid" else 422
                raise ApiError(
                    code, "invalid_request", "invalid rollback request", errors
                ) from None
        try:
            done = await asyncio.to_thread(loop.rollback, version, reason="operator")
        except (ValueError, IntegrityError, WarmupError) as exc:
            raise ApiError(409, "rollback_refused", str(exc)) from None
        return _json(done)

    @app.get("/v1/status", summary="Serving model, store, detectors, retraining, recent events")
    async def status() -> Response:
        def collect() -> dict[str, Any]:
            out = engine.status()
            loop = retrainer()
            out["retrain"] = loop.status() if loop is not None else None
            return out

        return _json(await asyncio.to_thread(collect))

    @app.get("/v1/models", summary="Registry versions and aliases")
    async def models() -> Response:
        return _json(await asyncio.to_thread(engine.models))

    @app.get("/v1/events", summary="The audit log, newest first; page with `before`")
    async def events(
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
        rows = await asyncio.to_thread(engine.store.events, kind=kind, before=before, limit=limit)
        items = [e.as_dict() for e in rows]
        return _json(
            {"events": items, "next_before": items[-1]["id"] if len(items) == limit else None}
        )

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get(
        "/readyz", summary="Readiness: a model is loaded", responses={503: {"model": ErrorBody}}
    )
    async def readyz() -> Response:
        live = engine.serving.current
        if live is None:
            return _json(
                {"error": "no_model", "message": engine._no_model_reason(), "errors": []}, 503
            )
        return _json({"status": "ready", "model_version": live.version})

    @app.get(
        "/metrics",
        summary="Prometheus exposition",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus() -> Response:
        data = await asyncio.to_thread(generate_latest, metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            defs: dict[str, Any] = {}
            for adapter in (docs.predict, docs.records, docs.labels):
                defs.update(
                    adapter.json_schema(ref_template="#/components/schemas/{model}").get(
                        "$defs", {}
                    )
                )
            for op in spec.get("paths", {}).values():
                for method in op.values():
                    for media in method.get("requestBody", {}).get("content", {}).values():
                        media.get("schema", {}).pop("$defs", None)
            spec.setdefault("components", {}).setdefault("schemas", {}).update(defs)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
