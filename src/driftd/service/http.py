"""JSON answers and refusals: one helper builds every error body, and the documented bodies.

Every refusal is ``{"error": code, "message": ..., "errors": [{index, field, message, type}]}``
with a 4xx status (a 5xx only for the daemon's own failures), never echoing the input; the
``code`` is also the reason in ``driftd_records_rejected_total{reason}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from driftd.ingest.validation import FieldError

__all__ = [
    "ERRORS",
    "ApiError",
    "ErrorBody",
    "IngestResponse",
    "LabelsResponse",
    "PredictResponse",
    "RetrainAccepted",
    "RollbackDone",
    "RollbackRequest",
    "error_body",
    "error_response",
    "json_response",
]

CLOSE = {"Connection": "close"}


class ApiError(Exception):
    """A refusal with its status, a short code (also the metric's reason) and a message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: Sequence[FieldError] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = list(errors)
        self.headers = headers


def error_body(code: str, message: str, errors: Sequence[FieldError] = ()) -> bytes:
    """The JSON body of every refusal."""
    body = {"error": code, "message": message, "errors": [e.as_dict() for e in errors]}
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()


def json_response(
    data: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
    background: BackgroundTask | None = None,
) -> Response:
    """``data`` as JSON; ``background`` runs once the response is sent."""
    return Response(
        json.dumps(data, allow_nan=False, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
        headers=headers,
        background=background,
    )


def error_response(exc: ApiError) -> Response:
    return Response(
        error_body(exc.code, exc.message, exc.errors),
        status_code=exc.status,
        media_type="application/json",
        headers=exc.headers,
    )


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


ERRORS: dict[int | str, dict[str, Any]] = {
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
