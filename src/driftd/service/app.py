"""The HTTP API (v1): the FastAPI application, its routes, refusals and OpenAPI document.

The endpoints are module-level functions in :mod:`driftd.service.routes`; this module
registers them with their documentation and the token scope each needs (checked by
:class:`~driftd.service.auth.Authorizer`), turns every refusal into one JSON body
(:func:`~driftd.service.http.error_response`) counted in
``driftd_records_rejected_total{reason}``, and builds the OpenAPI document from the schema's
own validators.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from driftd import __version__
from driftd.config import Scope, ServerConfig
from driftd.errors import StoreUnavailable
from driftd.ingest.schema import Schema
from driftd.ingest.validation import FieldError, Validators
from driftd.metrics import Metrics
from driftd.service import routes
from driftd.service.auth import Authorizer
from driftd.service.body import Bodies
from driftd.service.http import (
    ERRORS,
    ApiError,
    ErrorBody,
    IngestResponse,
    LabelsResponse,
    PredictResponse,
    RetrainAccepted,
    RollbackDone,
    RollbackRequest,
    error_response,
)
from driftd.service.parts import Parts

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(
    schema: Schema,
    server: ServerConfig,
    metrics: Metrics,
    parts: Callable[[], Parts | None],
    *,
    auth: Authorizer,
    open_probes: bool,
    lifespan: Any = None,
) -> FastAPI:
    """The application over ``parts`` (the daemon's, once started). With tokens in ``auth``,
    every route needs its scope; the probes (health, readiness, metrics) stay open while
    ``open_probes``."""
    docs = Validators(schema)  # uncapped: the documented schema leaves the cap to the 413
    app = FastAPI(
        title="driftd",
        version=__version__,
        description="Serve a model, watch its traffic for drift, retrain and redeploy it.",
        lifespan=lifespan,
        # Served by our own routes below, so that they need the read scope like other reads.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.api = routes.Api(Bodies(schema, server), metrics, parts)
    _refusals(app, metrics)
    _routes(_Registrar(app, auth), docs, probes=None if open_probes else "read")
    app.openapi = lambda: _openapi(app, docs, secured=auth.enabled)  # type: ignore[method-assign]
    return app


class _Registrar:
    """Adds a route with the scope it needs: the check runs first, and the OpenAPI document
    states the scope and the refusals (only while tokens exist, so that it describes the
    daemon as it runs)."""

    def __init__(self, app: FastAPI, auth: Authorizer) -> None:
        self.app = app
        self.auth = auth

    def __call__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        scope: Scope | None,
        *,
        responses: dict[int | str, dict[str, Any]] | None = None,
        openapi_extra: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if scope is not None and self.auth.enabled:
            options["dependencies"] = [Depends(self.auth.require(scope))]
            responses = {**(responses or {}), **_refused(scope)}
            openapi_extra = {**(openapi_extra or {}), "security": [{"bearer": [scope]}]}
        self.app.add_api_route(
            path, endpoint, responses=responses, openapi_extra=openapi_extra, **options
        )


def _refused(scope: Scope) -> dict[int | str, dict[str, Any]]:
    return {
        401: {"model": ErrorBody, "description": f"No valid bearer token (scope {scope!r})"},
        403: {"model": ErrorBody, "description": f"The token lacks the {scope!r} scope"},
    }


def _routes(add: _Registrar, docs: Validators, *, probes: Scope | None) -> None:
    no_model: dict[int | str, dict[str, Any]] = {
        503: {"model": ErrorBody, "description": "No model is serving yet"}
    }
    add(
        "/v1/predict",
        routes.predict,
        "predict",
        methods=["POST"],
        response_model=PredictResponse,
        responses={**ERRORS, **no_model},
        openapi_extra=_body_doc(docs.predict, ndjson=False),
        summary="Predict one or many instances; inputs and predictions are stored for monitoring",
    )
    add(
        "/v1/records",
        routes.records,
        "ingest",
        methods=["POST"],
        response_model=IngestResponse,
        responses=ERRORS,
        openapi_extra=_body_doc(docs.records, ndjson=True),
        summary="Observed traffic from elsewhere: features, optional prediction, optional label",
    )
    add(
        "/v1/labels",
        routes.labels,
        "ingest",
        methods=["POST"],
        response_model=LabelsResponse,
        responses=ERRORS,
        openapi_extra=_body_doc(docs.labels, ndjson=True),
        summary="Delayed labels by record or prediction id",
    )
    add(
        "/v1/retrain",
        routes.retrain,
        "operate",
        methods=["POST"],
        status_code=202,
        response_model=RetrainAccepted,
        responses={401: ERRORS[401], 503: {"model": ErrorBody}},
        summary="Ask for a retrain now (single flight: merged into a waiting job if there is one)",
    )
    rollback_body = {"application/json": {"schema": RollbackRequest.model_json_schema()}}
    refused = "Nothing to roll back to, or it fails to load"
    add(
        "/v1/rollback",
        routes.rollback,
        "operate",
        methods=["POST"],
        response_model=RollbackDone,
        responses={**ERRORS, 409: {"model": ErrorBody, "description": refused}},
        openapi_extra={"requestBody": {"required": False, "content": rollback_body}},
        summary="Serve the previous (or a named) version again",
    )
    add(
        "/v1/status",
        routes.status,
        "read",
        methods=["GET"],
        summary="Serving model, store, detectors, retraining, recent events",
    )
    add(
        "/v1/models",
        routes.models,
        "read",
        methods=["GET"],
        summary="Registry versions and aliases",
    )
    add(
        "/v1/events",
        routes.events,
        "read",
        methods=["GET"],
        summary="The audit log, newest first; page with `before`",
    )
    add("/openapi.json", routes.openapi, "read", methods=["GET"], include_in_schema=False)
    add("/docs", routes.swagger, "read", methods=["GET"], include_in_schema=False)
    add(
        "/healthz",
        routes.healthz,
        probes,
        methods=["GET"],
        summary="Liveness: the process answers",
    )
    add(
        "/readyz",
        routes.readyz,
        probes,
        methods=["GET"],
        summary="Readiness: a model is loaded",
        responses={503: {"model": ErrorBody}},
    )
    add(
        "/metrics",
        routes.prometheus,
        probes,
        methods=["GET"],
        summary="Prometheus exposition",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )


def _refusals(app: FastAPI, metrics: Metrics) -> None:
    """Every refusal, ours or the framework's, as one JSON body, counted by its code."""

    def refuse(exc: ApiError) -> Response:
        metrics.rejected.labels(exc.code).inc()
        return error_response(exc)

    async def api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return refuse(exc)

    async def query_error(_: Request, exc: Exception) -> Response:
        # Query parameters only (bodies are validated by the schema); never echo the input.
        assert isinstance(exc, RequestValidationError)
        errors = [
            FieldError(
                None,
                ".".join(str(p) for p in e["loc"][1:]) or "(query)",
                str(e["msg"]),
                str(e["type"]),
            )
            for e in exc.errors()
        ]
        return refuse(ApiError(422, "invalid_parameter", "invalid query parameter", errors))

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        # Keep Starlette's headers: a 405 must carry ``Allow`` (RFC 9110).
        headers = dict(exc.headers or {})
        return refuse(ApiError(exc.status_code, code, str(exc.detail), headers=headers))

    async def store_unavailable(_: Request, exc: Exception) -> Response:
        # Nothing of the request was committed: the producer re-sends, as after any 503.
        log.warning("refused a request: %s", exc)
        return refuse(ApiError(503, "store_unavailable", str(exc), headers={"Retry-After": "1"}))

    async def internal_error(_: Request, exc: Exception) -> Response:
        log.error("unhandled error in a request", exc_info=exc)
        return error_response(ApiError(500, "internal", "internal error; see the daemon's log"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, query_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(StoreUnavailable, store_unavailable)
    app.add_exception_handler(Exception, internal_error)


_BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "A token of the scope the operation names: ingest, predict, operate or read",
}


def _body_doc(adapter: Any, *, ndjson: bool) -> dict[str, Any]:
    schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
    if schema.get("type") == "array":
        schema["minItems"] = 1  # an empty batch is refused (Bodies.check_batch); say so
    content = {"application/json": {"schema": schema}}
    if ndjson:
        content["application/x-ndjson"] = {
            "schema": {"type": "string", "description": "One JSON object per line"}
        }
    return {"requestBody": {"required": True, "content": content}}


def _openapi(app: FastAPI, docs: Validators, *, secured: bool) -> dict[str, Any]:
    """FastAPI's document, with the schema's record types as shared components and, when
    tokens exist, the bearer scheme each operation's ``security`` names with its scope."""
    if app.openapi_schema is None:
        spec = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        defs: dict[str, Any] = {}
        for adapter in (docs.predict, docs.records, docs.labels):
            schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
            defs.update(schema.get("$defs", {}))
        for op in spec.get("paths", {}).values():
            for method in op.values():
                for media in method.get("requestBody", {}).get("content", {}).values():
                    media.get("schema", {}).pop("$defs", None)
        components = spec.setdefault("components", {})
        components.setdefault("schemas", {}).update(defs)
        if secured:
            components["securitySchemes"] = {"bearer": _BEARER}
        app.openapi_schema = spec
    return app.openapi_schema
