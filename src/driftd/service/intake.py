"""What one broker message becomes: a stored batch, or a refusal that names the field.

A message's body is what ``POST /v1/records`` or ``POST /v1/labels`` takes (JSON, or NDJSON
when its content type says so); it is read under the same caps and parsed, validated and
stored by the same code as the routes (:class:`~driftd.service.body.Bodies` and the engine,
in one task on the engine's worker). Refusals are the routes' :class:`ApiError` with their
codes, so that they count in ``driftd_records_rejected_total{reason}`` like HTTP ones.

One rule is the broker's own: every record must carry an ``id``. A broker delivers at least
once; a record without an id would get a new made-up id on each delivery and be stored
twice, where a re-sent id is a duplicate that changes nothing. Nothing here knows the
broker: it must never acknowledge anything itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from driftd.ingest.columns import Columns
from driftd.ingest.validation import MAX_ERRORS, FieldError, InvalidInput
from driftd.service.body import JSON_TYPES, NDJSON_TYPES, Bodies
from driftd.service.engine import Engine
from driftd.service.http import ApiError

__all__ = ["KINDS", "Intake"]

KINDS = ("records", "labels")


class Intake:
    """Stores broker messages into ``engine`` as records from ``source`` (or labels)."""

    def __init__(self, engine: Engine, bodies: Bodies, *, source: str) -> None:
        self.engine = engine
        self.bodies = bodies
        self.source = source

    async def store(
        self, kind: str, body: bytes, headers: Mapping[str, str] | None, now: float
    ) -> Any:
        """Store one message of ``kind`` (records or labels) and return what the route would
        answer, once committed; raise :class:`ApiError` for input HTTP would refuse (4xx),
        anything else for a failure to store it this time."""
        media = self._media(kind, body, headers or {})
        work = self.engine.submit(self._ingest, kind, body, media, now)
        return await asyncio.wrap_future(work)

    def _media(self, kind: str, body: bytes, headers: Mapping[str, str]) -> str:
        """The body's type (JSON unless a ``Content-Type`` header says otherwise); what HTTP
        refuses before parsing a body is refused here the same way."""
        if kind not in KINDS:
            raise ApiError(404, "not_found", f"{kind!r} is neither records nor labels")
        media = headers.get("Content-Type", JSON_TYPES[0]).split(";")[0].strip().lower()
        if media not in JSON_TYPES + NDJSON_TYPES:
            raise ApiError(
                415, "unsupported_media_type", f"content type {media!r} is not supported"
            )
        cap = self.bodies.server.max_body_bytes
        if len(body) > cap:
            msg = f"body of {len(body)} bytes is over the {cap}-byte cap"
            raise ApiError(413, "body_too_large", msg)
        return media

    def _ingest(self, kind: str, body: bytes, media: str, now: float) -> Any:
        """Parse, validate and store (on the engine's worker), as the routes do."""
        v = self.bodies.validators
        if kind == "records":
            return self.bodies.parsed(v.records, body, media, self._add_records, now=now)
        return self.bodies.parsed(v.labels, body, media, self.engine.add_labels, now=now)

    def _add_records(self, batch: Sequence[Any] | Columns, now: float) -> Any:
        missing = without_ids(batch)
        if missing:
            why = "required on records from a broker, so that a redelivery is a duplicate"
            errors = [FieldError(i, "id", why, "missing") for i in missing[:MAX_ERRORS]]
            raise InvalidInput(errors, total=len(missing))
        return self.engine.add_records(batch, self.source, now)


def without_ids(batch: Sequence[Any] | Columns) -> list[int]:
    """The indexes of the records in ``batch`` that carry no id.

    >>> without_ids([{"id": "a"}, {"features": {}}, {"id": "c"}])
    [1]
    """
    if isinstance(batch, Columns):
        ids = batch.ids
        return list(range(len(batch))) if ids is None else [i for i, x in enumerate(ids) if not x]
    return [i for i, record in enumerate(batch) if not record.get("id")]
