"""A corpus of hostile requests against a real daemon subprocess.

Each case has its documented status and error code (which is also the ``reason`` it is counted
under in ``driftd_records_rejected_total``), and after each one the daemon must still answer
``/healthz`` and a valid prediction. The daemon has a token per scope; a case sends its route's
token unless it is an attempt with another scope's token or a spoiled one. Beyond the corpus:
slow clients (a body that stops, a body sent a byte at a time), many concurrent large uploads
with the daemon's memory watched, and an endless chunked upload.

Not covered here because uvicorn answers before the app sees anything: a request line or header
block that is malformed gets uvicorn's own ``400`` (plain text, not counted in the metric).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import DaemonProcess, config_text, make_rows, write_csv

CAP = 1_048_576  # max_body_bytes in config_text()
READ_TIMEOUT_SECONDS = 8.0  # [server] read_timeout_seconds of the daemon under test
READ_IDLE_SECONDS = 3.0  # [server] read_idle_seconds
SERVER = (
    f"port = 0\nmax_body_bytes = {CAP}\nmax_batch_size = 2000\n"
    f"read_timeout_seconds = {READ_TIMEOUT_SECONDS}\nread_idle_seconds = {READ_IDLE_SECONDS}"
)
FEATURES = '"x1": 0.5, "x2": -1, "color": "red"'
GOOD = {"x0": 0.25, "x1": 0.5, "x2": -1.0, "color": "red"}
JSON = "application/json"
NDJSON = "application/x-ndjson"
INGEST, PREDICT = "hostile-ingest-token-0123", "hostile-predict-token-012"
OPERATE, READ = "hostile-operate-token-012", "hostile-read-token-012345"
AUTH = (
    f'[auth.tokens]\ningest = ["{INGEST}"]\npredict = ["{PREDICT}"]\n'
    f'operate = ["{OPERATE}"]\nread = ["{READ}"]\n'
)
ROUTE_TOKENS = {"/v1/records": INGEST, "/v1/labels": INGEST, "/v1/predict": PREDICT}


def start(base: Path, server: str = "", auth: str = "") -> DaemonProcess:
    csv_path = write_csv(base / "boot.csv", make_rows(1000, seed=1))
    cfg = base / "driftd.toml"
    sections = {"server": server} if server else None
    cfg.write_text(
        config_text(base / "state", bootstrap=str(csv_path), sections=sections, extra=auth)
    )
    return DaemonProcess(cfg).start()


def bearer(route: str) -> dict[str, str]:
    """The header of a token of the route's scope."""
    return {"Authorization": f"Bearer {ROUTE_TOKENS[route]}"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    proc = start(tmp_path_factory.mktemp("hostile"), SERVER, AUTH)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(live: DaemonProcess) -> Iterator[httpx.Client]:
    """Predicts with its token (the probes are open)."""
    with live.client(headers=bearer("/v1/predict")) as c:
        yield c


def rejected(client: httpx.Client, reason: str) -> float:
    m = re.search(
        rf'^driftd_records_rejected_total\{{reason="{reason}"\}} (\S+)$',
        client.get("/metrics").text,
        re.MULTILINE,
    )
    return float(m.group(1)) if m else 0.0


def assert_serving(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    r = client.post("/v1/predict", json={"instances": [GOOD]})
    assert r.status_code == 200, r.text


def rss_mb(daemon: DaemonProcess) -> dict[str, float]:
    assert daemon.proc is not None
    text = Path(f"/proc/{daemon.proc.pid}/status").read_text()
    found = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.MULTILINE))
    return {k: int(v) / 1024 for k, v in found.items()}


# -- the corpus --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hostile:
    name: str
    route: str
    body: Callable[[], bytes] | bytes  # built when the case runs, if large
    status: int
    error: str  # the error code, and the metric's reason
    content_type: str = JSON
    field: str | None = None  # a field the errors must name
    kind: str | None = None  # and its error type
    authorization: str | None = None  # sent instead of a bearer token of the route's scope


def records(*, x0: str = "0.5", extra: str = "") -> bytes:
    return f'[{{"features": {{"x0": {x0}, {FEATURES}}}{extra}}}]'.encode()


DIGITS = "9" * 5000
CORPUS = [
    Hostile("100,000 levels of [", "/v1/records", lambda: b"[" * 100_000, 400, "malformed_json"),
    Hostile(
        "100,000 levels of {", "/v1/predict", lambda: b'{"a":' * 100_000, 400, "malformed_json"
    ),
    Hostile(
        "50,000 nested arrays as a feature value",
        "/v1/records",
        lambda: records(x0="[" * 50_000 + "]" * 50_000),
        400,
        "malformed_json",
    ),
    Hostile(
        "10 MB string value, over the body cap",
        "/v1/records",
        lambda: records(extra=', "id": "' + "i" * 10_000_000 + '"'),
        413,
        "body_too_large",
    ),
    Hostile(
        "1e400 in a predict instance",
        "/v1/predict",
        f'{{"instances": [{{"x0": 1e400, {FEATURES}}}]}}'.encode(),
        422,
        "invalid_record",
        field="features.x0",
        kind="finite_number",
    ),
    Hostile(
        "1e400 as a timestamp",
        "/v1/records",
        lambda: records(extra=', "timestamp": 1e400'),
        422,
        "invalid_record",
        field="timestamp",
        kind="finite_number",
    ),
    Hostile(
        "a timestamp in the year 31 million",
        "/v1/records",
        lambda: records(extra=', "timestamp": 1e15'),
        422,
        "invalid_record",
        field="timestamp",
        kind="too_late",
    ),
    Hostile(
        "a negative timestamp on a label",
        "/v1/labels",
        b'[{"id": "a", "label": 1, "timestamp": -5}]',
        422,
        "invalid_record",
        field="timestamp",
        kind="greater_than_equal",
    ),
    Hostile(
        "a NUL in an id",
        "/v1/records",
        lambda: records(extra=', "id": "a\\u0000b"'),
        422,
        "invalid_record",
        field="id",
        kind="string_pattern_mismatch",
    ),
    Hostile(
        "a newline in a label's id, forging a log line",
        "/v1/labels",
        b'[{"id": "a\\n{\\"level\\": \\"error\\"}", "label": 1}]',
        422,
        "invalid_record",
        field="id",
        kind="string_pattern_mismatch",
    ),
    Hostile(
        "a string label for a model of integer classes",
        "/v1/labels",
        b'[{"id": "a", "label": "1"}]',
        422,
        "invalid_record",
        field="label",
        kind="label_type",
    ),
    Hostile(
        "an exponent of 5,000 digits",
        "/v1/records",
        lambda: records(x0="1e" + DIGITS),
        422,
        "invalid_record",
        field="features.x0",
        kind="finite_number",
    ),
    Hostile(
        "a 5,000-digit integer feature",
        "/v1/records",
        lambda: records(x0=DIGITS),
        400,  # out of the parser's range: refused as malformed, with the position
        "malformed_json",
    ),
    Hostile(
        "a 5,000-digit integer label",
        "/v1/labels",
        f'[{{"id": "a", "label": {DIGITS}}}]'.encode(),
        400,
        "malformed_json",
    ),
    Hostile(
        "a feature given twice, the valid value last",
        "/v1/records",
        f'[{{"features": {{"x0": "bad", "x0": 1, {FEATURES}}}}}]'.encode(),
        422,
        "invalid_record",
        field="features.x0",
        kind="duplicate_key",
    ),
    Hostile(
        "an id given twice in a label",
        "/v1/labels",
        lambda: b'[{"id": "a", "label": 1, "id": "b"}]',
        422,
        "invalid_record",
        field="id",
        kind="duplicate_key",
    ),
    Hostile(
        "instances given twice in a predict request",
        "/v1/predict",
        lambda: (
            json.dumps({"instances": [GOOD]})[:-1].encode()
            + b', "instances": '
            + json.dumps([GOOD]).encode()
            + b"}"
        ),
        422,
        "invalid_record",
        field="instances",
        kind="duplicate_key",
    ),
    Hostile(
        "a key given twice in an NDJSON line",
        "/v1/records",
        lambda: records()[1:-1] + b"\n" + records(extra=', "label": 0, "label": 1')[1:-1],
        422,
        "invalid_record",
        NDJSON,
        field="label",
        kind="duplicate_key",
    ),
    Hostile(
        "invalid UTF-8 in a string value",
        "/v1/records",
        lambda: records().replace(b"red", b"r\xffd"),
        400,
        "malformed_json",
    ),
    Hostile(
        "invalid UTF-8 in a key",
        "/v1/predict",
        lambda: f'{{"instances": [{{"x0": 1, {FEATURES}}}]}}'.encode().replace(b"x1", b"x\xc31"),
        400,
        "malformed_json",
    ),
    Hostile(
        "an overlong UTF-8 encoding of /",
        "/v1/records",
        lambda: records().replace(b"red", b"\xc0\xaf"),
        400,
        "malformed_json",
    ),
    Hostile(
        "invalid UTF-8 in an NDJSON line",
        "/v1/records",
        lambda: records()[1:-1].replace(b"red", b"\xed\xa0\x80"),  # an encoded surrogate
        400,
        "malformed_json",
        NDJSON,
    ),
    Hostile(
        "a body in UTF-16",
        "/v1/records",
        lambda: records().decode().encode("utf-16"),
        400,
        "malformed_json",
    ),
    Hostile(
        "a lone surrogate escape",
        "/v1/records",
        lambda: records().replace(b"red", b"\\ud800"),
        400,
        "malformed_json",
    ),
    Hostile(
        "a raw control character in a string",
        "/v1/records",
        lambda: records().replace(b"red", b"r\x00d"),
        400,
        "malformed_json",
    ),
    Hostile("an empty body", "/v1/labels", lambda: b"", 400, "malformed_json"),
    Hostile(
        "300,000 empty records in 900 KB",
        "/v1/records",
        lambda: b"[" + b",".join([b"{}"] * 300_000) + b"]",
        413,
        "batch_too_large",
    ),
    Hostile(
        "300,000 NDJSON lines",
        "/v1/labels",
        lambda: b'{"id":"a","label":1}\n' * 45_000,
        413,
        "batch_too_large",
        NDJSON,
    ),
    Hostile(
        "80,000 unknown feature keys",
        "/v1/records",
        lambda: records(x0="1," + ",".join(f'"k{i}":1' for i in range(80_000))),
        422,
        "invalid_record",
        field="features.k0",
        kind="extra_forbidden",
    ),
    # -- another scope's token, or a spoiled one: refused before the body is read
    Hostile(
        "a predict token posting 100,000 levels of [ as records",
        "/v1/records",
        lambda: b"[" * 100_000,
        403,
        "forbidden",
        authorization=f"Bearer {PREDICT}",
    ),
    Hostile(
        "an ingest token asking for predictions",
        "/v1/predict",
        json.dumps({"instances": [GOOD]}).encode(),
        403,
        "forbidden",
        authorization=f"Bearer {INGEST}",
    ),
    Hostile(
        "an ingest token asking for a rollback",
        "/v1/rollback",
        b"",
        403,
        "forbidden",
        authorization=f"Bearer {INGEST}",
    ),
    Hostile(
        "a read token asking for a retrain",
        "/v1/retrain",
        b"",
        403,
        "forbidden",
        authorization=f"Bearer {READ}",
    ),
    Hostile(
        "the ingest token with one byte more",
        "/v1/records",
        records(),
        401,
        "unauthorized",
        authorization=f"Bearer {INGEST}x",
    ),
    Hostile(
        "a read token and the ingest token in one header",
        "/v1/records",
        records(),
        401,
        "unauthorized",
        authorization=f"Bearer {READ} {INGEST}",
    ),
    Hostile(
        "the operate token as Basic credentials",
        "/v1/rollback",
        b"",
        401,
        "unauthorized",
        authorization=f"Basic {OPERATE}",
    ),
    Hostile(
        "an 8 KB bearer token",
        "/v1/labels",
        b'[{"id": "a", "label": 1}]',
        401,
        "unauthorized",
        authorization="Bearer " + "t" * 8192,
    ),
]


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_a_hostile_request_gets_its_documented_status_and_the_daemon_keeps_serving(
    client: httpx.Client, case: Hostile
) -> None:
    before = rejected(client, case.error)
    body = case.body if isinstance(case.body, bytes) else case.body()
    start = time.perf_counter()
    auth = (
        bearer(case.route) if case.authorization is None else {"Authorization": case.authorization}
    )
    r = client.post(case.route, content=body, headers={"Content-Type": case.content_type, **auth})
    elapsed = time.perf_counter() - start
    assert r.status_code == case.status, r.text[:500]
    reply = r.json()
    assert reply["error"] == case.error, reply
    if case.field is not None:
        assert (case.field, case.kind) in [(e["field"], e["type"]) for e in reply["errors"]], reply
    # A refusal is small (at most 100 errors listed) and cheap, however large the request.
    assert len(r.content) < 20_000, f"{len(r.content)}-byte answer to a {len(body)}-byte body"
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert rejected(client, case.error) == before + 1
    assert_serving(client)


def test_eighty_thousand_errors_are_counted_but_not_all_listed(client: httpx.Client) -> None:
    body = records(x0="1," + ",".join(f'"k{i}":1' for i in range(80_000)))
    r = client.post(
        "/v1/records", content=body, headers={"Content-Type": JSON, **bearer("/v1/records")}
    )
    assert r.status_code == 422
    reply = r.json()
    assert len(reply["errors"]) == 100
    assert reply["message"].startswith("80000 error(s) (100 listed)"), reply["message"]


def test_a_ten_megabyte_string_under_a_raised_cap_is_refused_as_too_long(
    tmp_path: Path,
) -> None:
    daemon = start(tmp_path, "port = 0\nmax_body_bytes = 16777216\nmax_batch_size = 2000")
    try:
        with daemon.client() as c:
            body = records().replace(b"red", b"r" * 10_000_000)
            r = c.post("/v1/records", content=body, headers={"Content-Type": JSON})
            assert r.status_code == 422, r.text[:300]
            err = r.json()["errors"][0]
            assert (err["field"], err["type"]) == ("features.color", "string_too_long")
            assert len(r.content) < 1000, "the string is never echoed"
            assert rejected(c, "invalid_record") == 1
            assert_serving(c)
    finally:
        daemon.stop()


# -- slow and abandoned uploads ----------------------------------------------------------------
def post_head(length: int | None = None) -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST /v1/records HTTP/1.1\r\nHost: driftd\r\nContent-Type: {JSON}\r\n{size}\r\n"
        f"Authorization: Bearer {INGEST}\r\n\r\n"
    ).encode()


def read_reply(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while part := sock.recv(65536):
            data += part
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def read_response(sock: socket.socket, timeout: float = 5) -> bytes:
    """One whole response (head and ``content-length`` bytes of body) from a kept-alive
    connection."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    declared = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
    assert declared is not None, head
    length = int(declared.group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_body_that_stops_arriving_is_refused_with_408_and_the_connection_closed(
    live: DaemonProcess, client: httpx.Client
) -> None:
    before = rejected(client, "read_timeout")
    with socket.create_connection(("127.0.0.1", live.port)) as s:
        s.sendall(post_head(1000) + records()[:20])
        start = time.monotonic()
        assert_serving(client)  # others are served while this one waits
        reply = read_reply(s, READ_IDLE_SECONDS + 10)
        waited = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"read_timeout" in reply and b"connection: close" in reply.lower()
    assert READ_IDLE_SECONDS - 1 < waited < READ_IDLE_SECONDS + 5
    assert rejected(client, "read_timeout") == before + 1
    assert_serving(client)


def test_a_slow_loris_sending_a_byte_a_second_is_cut_off_at_the_read_deadline(
    live: DaemonProcess, client: httpx.Client
) -> None:
    before = rejected(client, "read_timeout")
    body = records()
    latencies: list[float] = []
    with socket.create_connection(("127.0.0.1", live.port)) as s:
        s.sendall(post_head(len(body) * 100))
        start = time.monotonic()
        s.settimeout(0.01)
        reply = b""
        for byte in body * 100:
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            t = time.perf_counter()
            assert_serving(client)
            latencies.append(time.perf_counter() - t)
            with contextlib.suppress(TimeoutError):
                reply += s.recv(65536)
            if reply:
                break
            time.sleep(1)
            assert time.monotonic() - start < READ_TIMEOUT_SECONDS + 10, "never cut off"
        reply += read_reply(s, 5)
        waited = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert READ_TIMEOUT_SECONDS - 2 < waited < READ_TIMEOUT_SECONDS + 5
    assert max(latencies) < 2, f"others waited up to {max(latencies):.2f} s"
    assert rejected(client, "read_timeout") == before + 1


def test_headers_that_never_finish_and_a_silent_connection_are_closed_at_the_read_deadline(
    live: DaemonProcess, client: httpx.Client
) -> None:
    """uvicorn bounds neither: a client sending part of its headers, or nothing at all, would
    hold its connection (and a file descriptor) forever. The first gets a 408, the second is
    closed without a word; both are counted."""
    timeouts, idle = rejected(client, "read_timeout"), rejected(client, "idle_connection")
    head = b"POST /v1/records HTTP/1.1\r\nHost: driftd\r\nContent-Type: "
    with (
        socket.create_connection(("127.0.0.1", live.port)) as partial,
        socket.create_connection(("127.0.0.1", live.port)) as silent,
        socket.create_connection(("127.0.0.1", live.port)) as reused,
    ):
        # a kept-alive connection: one request answered, then the next one's headers stall
        reused.sendall(b"GET /healthz HTTP/1.1\r\nHost: driftd\r\n\r\n")
        assert read_response(reused).startswith(b"HTTP/1.1 200")
        partial.sendall(head)
        reused.sendall(head)
        start = time.monotonic()
        assert_serving(client)
        replies = [read_reply(s, READ_TIMEOUT_SECONDS + 10) for s in (partial, reused)]
        waited = time.monotonic() - start
        nothing = read_reply(silent, 10)  # opened with the others: closed by now, not waiting
        silent_closed = time.monotonic() - start < READ_TIMEOUT_SECONDS + 5
    for reply in replies:
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"read_timeout" in reply and b"connection: close" in reply.lower()
    assert READ_TIMEOUT_SECONDS - 1 < waited < READ_TIMEOUT_SECONDS + 5
    assert nothing == b"" and silent_closed
    assert rejected(client, "read_timeout") == timeouts + 2
    assert rejected(client, "idle_connection") == idle + 1
    assert_serving(client)


def test_many_slow_clients_do_not_stall_the_others_and_are_counted_when_they_give_up(
    live: DaemonProcess, client: httpx.Client
) -> None:
    before = rejected(client, "client_disconnect")
    socks = [socket.create_connection(("127.0.0.1", live.port)) for _ in range(20)]
    latencies = []
    try:
        for s in socks:
            s.sendall(post_head(100_000))
        for i in range(6):
            for s in socks:
                s.sendall(records()[i : i + 1])
            t = time.perf_counter()
            assert_serving(client)
            latencies.append(time.perf_counter() - t)
            time.sleep(0.3)
    finally:
        for s in socks:
            s.close()
    assert max(latencies) < 1.0, f"a prediction waited {max(latencies):.2f} s"
    deadline = time.monotonic() + 5
    while rejected(client, "client_disconnect") < before + 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rejected(client, "client_disconnect") == before + 20
    assert not [e for e in live.lines if "unhandled error" in str(e.get("message"))]


def test_an_endless_chunked_upload_is_cut_at_the_cap(
    live: DaemonProcess, client: httpx.Client
) -> None:
    before = rejected(client, "body_too_large")
    chunk = b" " * 65536
    sent = 0
    with socket.create_connection(("127.0.0.1", live.port)) as s:
        s.sendall(post_head())
        try:
            while sent < 256 * CAP:
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon answered and closed the connection
        reply = read_reply(s, 10)
    assert sent < 32 * CAP, f"the daemon read {sent} bytes of an endless body"
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert rejected(client, "body_too_large") == before + 1
    assert_serving(client)


# -- load --------------------------------------------------------------------------------------
def padded_batch(n: int, size: int) -> bytes:
    body = json.dumps([r["features"] for r in make_rows(n, seed=n)])
    body = '{"instances": ' + body + "}"
    return body.encode() + b" " * (size - len(body))


def test_twenty_concurrent_large_uploads_get_their_status_and_memory_stays_bounded(
    live: DaemonProcess, client: httpx.Client
) -> None:
    size = 900 * 1024
    valid = padded_batch(1000, size)
    too_long = records().replace(b"red", b"r" * (size - 100))
    over = b"[" + b" " * (CAP + 1000) + b"]"

    def chunked() -> Iterator[bytes]:
        for i in range(0, len(over), 65536):
            yield over[i : i + 65536]

    plan: list[tuple[str, bytes | None, int]] = (
        [("/v1/predict", valid, 200)] * 8
        + [("/v1/records", too_long, 422)] * 6
        + [("/v1/records", None, 413)] * 6
    )

    def send(job: tuple[str, bytes | None, int]) -> tuple[int, int]:
        route, body, want = job
        with live.client() as c:
            content = chunked() if body is None else body
            r = c.post(route, content=content, headers={"Content-Type": JSON, **bearer(route)})
        return r.status_code, want

    assert_serving(client)
    first = rss_mb(live)
    figures = []
    for _round in range(3):
        done = threading.Event()
        latencies: list[float] = []

        def probe(done: threading.Event = done, latencies: list[float] = latencies) -> None:
            with live.client() as c:
                while not done.is_set():
                    t = time.perf_counter()
                    assert c.get("/healthz").status_code == 200
                    latencies.append(time.perf_counter() - t)
                    time.sleep(0.05)

        watcher = threading.Thread(target=probe)
        watcher.start()
        try:
            with ThreadPoolExecutor(len(plan)) as pool:
                results = list(pool.map(send, plan))
        finally:
            done.set()
            watcher.join()
        assert [got for got, _ in results] == [want for _, want in results]
        figures.append(rss_mb(live))
        assert latencies, "the health probe never ran"
    assert_serving(client)
    growth = figures[-1]["VmRSS"] - first["VmRSS"]
    peak = figures[-1]["VmHWM"] - first["VmRSS"]
    print(f"RSS before {first}, after each round {figures}")
    assert growth < 200, f"RSS grew by {growth:.0f} MB"
    assert peak < 300, f"RSS peaked {peak:.0f} MB above the start"
    # No round leaves more behind than the first did: nothing accumulates.
    assert figures[2]["VmRSS"] - figures[0]["VmRSS"] < 60
