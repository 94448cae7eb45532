"""Request bodies: received under a size cap and deadlines, typed, parsed and validated once.

Bodies are read here, not by FastAPI, so that the size cap counts the bytes actually received
(a chunked upload cannot slip past it) and so that records are parsed and validated in one pass
by the schema's compiled validators (or decoded straight into columns when all-numeric).
Every refusal is an :class:`~driftd.service.http.ApiError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from driftd.config import ServerConfig
from driftd.ingest.columns import ColumnDecoder, Columns
from driftd.ingest.schema import Schema
from driftd.ingest.validation import FieldError, InvalidInput, Validators, late_timestamps
from driftd.service.http import CLOSE, ApiError

__all__ = ["JSON_TYPES", "NDJSON_TYPES", "Bodies"]

JSON_TYPES = ("application/json",)
NDJSON_TYPES = (
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/x-jsonlines",
)


class Bodies:
    """Reads and parses the bodies of one schema's requests under ``[server]``'s caps."""

    def __init__(self, schema: Schema, server: ServerConfig) -> None:
        self.server = server
        # Parsing stops at the batch cap; the documented schema leaves the cap to the 413.
        self.validators = Validators(schema, max_items=server.max_batch_size)
        self.columns = ColumnDecoder.for_schema(schema, max_items=server.max_batch_size)
        self.max_ahead = schema.max_timestamp_ahead

    def media_type(self, request: Request, *, ndjson: bool) -> str:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in JSON_TYPES or (ndjson and kind in NDJSON_TYPES):
            return kind
        allowed = "application/json" + (" or application/x-ndjson" if ndjson else "")
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content type {kind or '(none)'!r} is not supported; send {allowed}",
        )

    async def read(self, request: Request) -> bytearray:
        """The body, at most ``max_body_bytes`` of it held at any time (one buffer, no joined
        copy), received within ``read_timeout_seconds`` and with no pause over
        ``read_idle_seconds``: uvicorn times out neither, so a client sending a byte a second
        would otherwise hold its request open forever. A refusal mid-body closes the
        connection rather than reading (and discarding) the rest."""
        limit = self.server.max_body_bytes
        whole, idle = self.server.read_timeout_seconds, self.server.read_idle_seconds
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(
                413,
                "body_too_large",
                f"body of {declared} bytes is over the {limit}-byte cap",
                headers=CLOSE,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + whole
        body = bytearray()
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + idle)) as cm:
                async for chunk in request.stream():
                    if len(body) + len(chunk) > limit:
                        msg = f"body is over the {limit}-byte cap"
                        raise ApiError(413, "body_too_large", msg, headers=CLOSE)
                    body += chunk
                    cm.reschedule(min(deadline, loop.time() + idle))
        except TimeoutError:
            raise ApiError(
                408,
                "read_timeout",
                f"the body did not arrive within {whole:g} s"
                if loop.time() >= deadline
                else f"the client sent nothing for {idle:g} s",
                headers=CLOSE,
            ) from None
        except ClientDisconnect:
            raise ApiError(
                400, "client_disconnect", "the client closed the connection mid-body"
            ) from None
        return body

    def parse(self, adapter: Any, body: bytes | bytearray, kind: str) -> Any:
        """Validate ``body`` with one of :attr:`validators`' adapters (records decode straight
        into columns when they can); JSON or NDJSON by ``kind``."""
        v = self.validators
        if adapter is v.records and self.columns is not None and kind in JSON_TYPES:
            decoded = self.columns.decode(body)
            if decoded is not None:
                return decoded
        try:
            if kind in NDJSON_TYPES:
                item = v.record if adapter is v.records else v.label_record
                return v.parse_ndjson(item, body)
            return v.parse(adapter, body)
        except InvalidInput as exc:
            if exc.errors and exc.errors[0].type == "too_long":
                msg = f"batch is over the {self.server.max_batch_size}-record cap"
                raise ApiError(413, "batch_too_large", msg) from None
            if exc.malformed:
                raise ApiError(400, "malformed_json", exc.errors[0].message, exc.errors) from None
            raise _invalid(exc) from None

    def check_batch(self, n: int) -> None:
        cap = self.server.max_batch_size
        if n > cap:
            raise ApiError(
                413, "batch_too_large", f"batch of {n} records is over the {cap}-record cap"
            )
        if n == 0:
            raise ApiError(
                422,
                "invalid_record",
                "empty batch",
                [FieldError(None, "(body)", "empty batch", "too_short")],
            )

    def parsed(
        self,
        adapter: Any,
        body: bytes | bytearray,
        kind: str,
        then: Callable[..., Any],
        *args: Any,
        now: float,
    ) -> Any:
        """Parse and validate a batch, then ``then(batch, *args, now)``: run in one task on the
        ingest worker, one thread hop per request, and the event loop never spends the
        milliseconds a large batch takes to parse. What ``then`` refuses as invalid (a label of
        the wrong class type) is a 422 like any other invalid field."""
        batch = self.parse(adapter, body, kind)
        self.check_batch(len(batch))
        times = (
            batch.timestamps
            if isinstance(batch, Columns)
            else [item.get("timestamp") for item in batch]
        )
        if times and (late := late_timestamps(times, now + self.max_ahead)):
            raise _invalid(InvalidInput(late, total=len(late)))
        try:
            return then(batch, *args, now)
        except InvalidInput as exc:
            raise _invalid(exc) from None


def _invalid(exc: InvalidInput) -> ApiError:
    return ApiError(422, "invalid_record", str(exc), exc.errors)
