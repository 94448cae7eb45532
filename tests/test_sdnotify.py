"""sd_notify: exact datagrams on a real AF_UNIX socket, silence outside systemd, watchdog pacing.

The receiving end of every test is a real ``AF_UNIX``/``SOCK_DGRAM`` socket standing in for the
service manager, bound either in a temporary directory or in the abstract namespace.
"""

from __future__ import annotations

import doctest
import itertools
import logging
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator

import pytest

import driftd.service.sdnotify
from driftd.service.sdnotify import Notifier, Watchdog, watchdog_interval


class Manager:
    """The service manager's end: a bound datagram socket that collects what arrives."""

    def __init__(self, address: str, bind_to: str | bytes) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(2.0)

    def recv(self) -> bytes:
        return self.sock.recv(65536)

    def pending(self) -> list[bytes]:
        """Every datagram queued right now, without waiting."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(65536))
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(2.0)
        return out


@pytest.fixture
def manager() -> Iterator[Manager]:
    # A short directory: sun_path holds at most 107 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="driftd-sd-") as tmp:
        path = os.path.join(tmp, "notify")
        m = Manager(path, path)
        yield m
        m.sock.close()


@pytest.fixture
def abstract_manager() -> Iterator[Manager]:
    name = f"driftd-test-{uuid.uuid4().hex}"
    m = Manager("@" + name, b"\0" + name.encode())
    yield m
    m.sock.close()


def test_ready_sends_ready_and_status_in_one_datagram(manager: Manager) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": manager.address})
    assert notifier.enabled
    assert notifier.ready() is True
    assert notifier.ready(status="serving v000003") is True
    assert manager.recv() == b"READY=1"
    assert manager.recv() == b"READY=1\nSTATUS=serving v000003"


def test_each_state_method_sends_its_documented_fields(manager: Manager) -> None:
    notifier = Notifier(manager.address)
    assert notifier.status("loading model")
    assert notifier.watchdog()
    assert notifier.stopping()
    assert notifier.stopping(status="draining")
    assert notifier.extend_timeout(12.5)
    assert notifier.notify(STATUS="x", ERRNO=5)
    assert notifier.send("FDSTORE=0")
    assert manager.pending() == [
        b"STATUS=loading model",
        b"WATCHDOG=1",
        b"STOPPING=1",
        b"STOPPING=1\nSTATUS=draining",
        b"EXTEND_TIMEOUT_USEC=12500000",
        b"STATUS=x\nERRNO=5",
        b"FDSTORE=0",
    ]


def test_reloading_carries_the_monotonic_clock_in_microseconds(manager: Manager) -> None:
    notifier = Notifier(manager.address)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading(status="reloading config")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = manager.recv().decode().split("\n")
    assert fields[0] == "RELOADING=1"
    assert fields[2] == "STATUS=reloading config"
    key, _, usec = fields[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(usec) <= after


def test_abstract_namespace_address_with_leading_at(abstract_manager: Manager) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": abstract_manager.address})
    assert notifier.ready(status="up")
    assert abstract_manager.recv() == b"READY=1\nSTATUS=up"


def test_newlines_in_a_value_cannot_inject_fields(manager: Manager) -> None:
    notifier = Notifier(manager.address)
    assert notifier.status("bad\nREADY=1\r\nmore")
    assert manager.recv() == b"STATUS=bad READY=1  more"


def test_field_names_must_be_upper_case_assignments(manager: Manager) -> None:
    notifier = Notifier(manager.address)
    with pytest.raises(ValueError, match="'status'"):
        notifier.notify(status="x")
    with pytest.raises(ValueError, match="empty message"):
        notifier.send("")
    assert manager.pending() == []


def test_notify_socket_is_read_once_at_construction(
    manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", manager.address)
    notifier = Notifier.from_environ()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notifier.ready()
    assert manager.recv() == b"READY=1"


def test_without_notify_socket_every_call_is_a_silent_no_op(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    def no_sockets(*args: object, **kwargs: object) -> socket.socket:
        raise AssertionError("a disabled notifier must not open a socket")

    monkeypatch.setattr(socket, "socket", no_sockets)
    caplog.set_level(logging.DEBUG, logger="driftd.service.sdnotify")
    for notifier in (Notifier.from_environ(), Notifier.from_environ({}), Notifier(""), Notifier()):
        assert not notifier.enabled
        assert notifier.ready(status="x") is False
        assert notifier.status("x") is False
        assert notifier.watchdog() is False
        assert notifier.reloading() is False
        assert notifier.stopping() is False
    assert caplog.records == []


@pytest.mark.parametrize("address", ["relative/notify", "vsock:2:1234"])
def test_an_unusable_address_disables_the_notifier_with_a_warning(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(address)
    assert not notifier.enabled
    assert notifier.ready() is False
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert address in caplog.text


def test_send_failure_is_logged_at_debug_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="driftd.service.sdnotify")
    with tempfile.TemporaryDirectory(prefix="driftd-sd-") as tmp:
        notifier = Notifier(os.path.join(tmp, "nobody-listens"))
        assert notifier.enabled
        assert notifier.ready() is False
        assert Notifier("/" + "x" * 200).watchdog() is False  # longer than sun_path
    assert [r.levelno for r in caplog.records] == [logging.DEBUG, logging.DEBUG]
    assert "message dropped" in caplog.text


def test_a_manager_that_does_not_read_never_blocks_the_sender(manager: Manager) -> None:
    """The kernel queues only a few datagrams per socket; the rest are dropped, not waited on."""
    notifier = Notifier(manager.address)
    started = time.monotonic()
    results = [notifier.status(f"message {i}") for i in range(2000)]
    assert time.monotonic() - started < 5.0
    assert results[0] is True
    assert False in results
    assert manager.recv() == b"STATUS=message 0"


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "200000"}) == 0.1
    own = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": own}) == 0.1


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "30s"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"},
        {"WATCHDOG_PID": "1"},
    ],
)
def test_watchdog_interval_is_none_when_pings_are_not_expected_from_us(
    environ: dict[str, str],
) -> None:
    assert watchdog_interval(environ) is None


def test_watchdog_interval_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 2.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None


def test_watchdog_pings_at_most_once_per_interval_on_a_fake_clock(manager: Manager) -> None:
    dog = Watchdog(Notifier(manager.address), interval=15.0)
    assert dog.enabled
    sent = [now for now in (0.0, 1.0, 14.99, 15.0, 29.0, 30.5, 31.0, 45.5) if dog.tick(now, True)]
    assert sent == [0.0, 15.0, 30.5, 45.5]
    assert dog.last_ping == 45.5
    assert manager.pending() == [b"WATCHDOG=1"] * 4


def test_watchdog_withholds_pings_while_unhealthy_and_resumes_after(
    manager: Manager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="driftd.service.sdnotify")
    dog = Watchdog(Notifier(manager.address), interval=1.0)
    assert dog.tick(0.0, healthy=True)
    assert not any(dog.tick(now, healthy=False) for now in (1.0, 2.0, 3.0, 4.0))
    assert dog.last_ping == 0.0
    assert dog.tick(4.5, healthy=True)
    assert manager.pending() == [b"WATCHDOG=1", b"WATCHDOG=1"]
    # One warning when withholding starts, one note when it ends: not one line per tick.
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]


def test_a_failed_ping_is_retried_on_the_next_tick() -> None:
    outcomes = iter([False, True])

    class Flaky(Notifier):
        def send(self, text: str) -> bool:
            return next(outcomes)

    dog = Watchdog(Flaky("/run/systemd/notify"), interval=10.0)
    assert dog.tick(0.0, healthy=True) is False
    assert dog.last_ping is None
    assert dog.tick(0.5, healthy=True) is True
    assert dog.last_ping == 0.5


def test_watchdog_is_disabled_without_interval_or_socket(manager: Manager) -> None:
    assert not Watchdog(Notifier(manager.address), interval=None).tick(0.0, healthy=True)
    assert not Watchdog(Notifier(None), interval=1.0).tick(0.0, healthy=True)
    assert manager.pending() == []
    with pytest.raises(ValueError, match="interval"):
        Watchdog(Notifier(None), interval=0.0)


def test_watchdog_pid_of_another_process_disables_pings(manager: Manager) -> None:
    """A child that inherited the parent's environment must not ping on the parent's behalf."""
    env = {
        "NOTIFY_SOCKET": manager.address,
        "WATCHDOG_USEC": "200000",
        "WATCHDOG_PID": str(os.getppid()),
    }
    dog = Watchdog.from_environ(Notifier.from_environ(env), env)
    assert not dog.enabled
    assert not any(dog.tick(float(now), healthy=True) for now in range(10))
    assert manager.pending() == []
    env["WATCHDOG_PID"] = str(os.getpid())
    assert Watchdog.from_environ(Notifier.from_environ(env), env).tick(0.0, healthy=True)
    assert manager.recv() == b"WATCHDOG=1"


STALLING_DAEMON = textwrap.dedent(
    """
    import asyncio, time
    from driftd.service.sdnotify import Notifier, Watchdog

    async def main():
        notifier = Notifier.from_environ()
        dog = Watchdog.from_environ(notifier)
        assert dog.interval == 0.1, dog.interval
        loop = asyncio.get_running_loop()

        async def on_tick():
            while True:
                dog.tick(loop.time(), healthy=True)
                await asyncio.sleep(0.05)

        chores = asyncio.create_task(on_tick())
        await asyncio.sleep(0.6)
        notifier.status("stall")
        time.sleep(1.0)  # the loop is blocked, as by a hung handler
        notifier.status("unstalled")
        await asyncio.sleep(0.6)
        chores.cancel()
        notifier.stopping()

    asyncio.run(main())
    """
)


def test_a_blocked_event_loop_stops_the_watchdog_pings(manager: Manager) -> None:
    """Pings come from the loop itself: none while it is blocked, so systemd would restart it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    env |= {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "200000"}
    proc = subprocess.Popen(
        [sys.executable, "-c", STALLING_DAEMON],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    received: list[tuple[float, bytes]] = []
    manager.sock.settimeout(0.01)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            received.append((time.monotonic(), manager.sock.recv(65536)))
        except TimeoutError:
            if proc.poll() is not None:
                break
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr.decode()
    assert received[-1][1] == b"STOPPING=1"

    messages = [m for _, m in received]
    stall, unstall = messages.index(b"STATUS=stall"), messages.index(b"STATUS=unstalled")
    assert set(messages[:stall]) == {b"WATCHDOG=1"}
    assert len(messages[:stall]) >= 3, "pings arrive while the loop runs"
    assert messages[stall + 1 : unstall] == [], "no ping while the loop is blocked"
    after = [t for t, m in received[unstall:] if m == b"WATCHDOG=1"]
    assert len(after) >= 3, "pings resume when the loop runs again"

    pings = [t for t, m in received if m == b"WATCHDOG=1"]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    stall_gap = after[0] - received[stall - 1][0]
    # The stall is far longer than WATCHDOG_USEC (0.2 s): systemd would have fired.
    assert stall_gap >= 0.8
    assert max(gaps) == stall_gap
    assert sorted(gaps)[-2] < 0.5, "outside the stall the pings are regular"


def test_docstring_examples_hold() -> None:
    result = doctest.testmod(driftd.service.sdnotify, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
