"""The systemd notification protocol (``sd_notify(3)``), written here instead of pulled from PyPI.

A :class:`Notifier` sends ``KEY=value`` datagrams to the socket named by ``$NOTIFY_SOCKET``:
``READY=1`` once serving, ``STATUS=`` for ``systemctl status``, ``RELOADING=1`` and
``STOPPING=1`` around SIGHUP and SIGTERM, ``WATCHDOG=1`` as the keep-alive. A :class:`Watchdog`
decides when the keep-alive is due; the daemon ticks it from its asyncio loop, so a blocked loop
stops the pings and systemd restarts the service after ``WatchdogSec=``.

This module must never raise into the daemon because the service manager is absent or busy:
outside systemd every call is a no-op, and a failed send is logged at debug level and dropped.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier", "Watchdog", "watchdog_interval"]

logger = logging.getLogger(__name__)

_KEY = re.compile(r"[A-Z][A-Z0-9_]*\Z")


class Notifier:
    """Send state changes to the service manager over ``$NOTIFY_SOCKET``.

    Parameters
    ----------
    address
        A filesystem path (``/run/systemd/notify``) or an abstract socket name written with a
        leading ``@``. ``None`` or ``""`` gives a disabled notifier whose calls do nothing.

    Notes
    -----
    Every message is one datagram on a fresh non-blocking ``AF_UNIX``/``SOCK_DGRAM`` socket, as
    ``libsystemd`` does: nothing stays open across ``fork``, and a full queue on the manager's
    side drops the message instead of blocking the event loop. Each method returns whether the
    datagram was sent. With ``NotifyAccess=main`` only the main process may notify, so a child
    process (training runs in one) must not use a notifier.

    Examples
    --------
    >>> import os, socket, tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = os.path.join(tmp.name, "notify")
    >>> manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    >>> manager.bind(path)
    >>> notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    >>> notifier.ready(status="serving v000001")
    True
    >>> manager.recv(4096)
    b'READY=1\\nSTATUS=serving v000001'
    >>> notifier.status("retraining: drift on feature 'amount'\\n(3 signals)")
    True
    >>> manager.recv(4096)
    b"STATUS=retraining: drift on feature 'amount' (3 signals)"
    >>> manager.close()
    >>> tmp.cleanup()

    Outside systemd nothing is sent and nothing fails:

    >>> Notifier.from_environ({}).ready()
    False
    """

    def __init__(self, address: str | None = None) -> None:
        self.address = address or None
        self._target: bytes | None = None
        if self.address is None:
            return
        if self.address.startswith("@"):
            self._target = b"\0" + os.fsencode(self.address[1:])
        elif self.address.startswith("/"):
            self._target = os.fsencode(self.address)
        else:
            logger.warning(
                "NOTIFY_SOCKET=%r is neither an absolute path nor an abstract '@name';"
                " systemd notifications are disabled",
                self.address,
            )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET`` once, from ``environ`` or else from :data:`os.environ`."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere (a usable ``NOTIFY_SOCKET`` was given)."""
        return self._target is not None

    def send(self, text: str) -> bool:
        """Send ``text`` (newline-separated ``KEY=value`` lines) as one datagram."""
        if not text:
            raise ValueError("text: got an empty message, expected KEY=value lines")
        if self._target is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(text.encode("utf-8"), self._target)
        except OSError as exc:
            logger.debug("sd_notify to %r failed, message dropped: %s", self.address, exc)
            return False
        return True

    def notify(self, **fields: object) -> bool:
        """Send ``KEY=value`` fields in the order given; newlines in values become spaces."""
        lines = []
        for key, value in fields.items():
            if not _KEY.match(key):
                raise ValueError(f"field {key!r}: expected an upper-case name such as STATUS")
            text = str(value).replace("\r", " ").replace("\n", " ")
            lines.append(f"{key}={text}")
        return self.send("\n".join(lines))

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete: ``READY=1``, with an optional ``STATUS=``."""
        return self.notify(READY=1, **_status(status))

    def status(self, text: str) -> bool:
        """One line for ``systemctl status``: ``STATUS=text``."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """The keep-alive ping, ``WATCHDOG=1``. Prefer :class:`Watchdog`, which paces it."""
        return self.notify(WATCHDOG=1)

    def reloading(self, status: str | None = None) -> bool:
        """A reload started: ``RELOADING=1`` and ``MONOTONIC_USEC=`` (``CLOCK_MONOTONIC``, µs).

        ``Type=notify-reload`` needs the timestamp to match the reload to the message; older
        managers ignore the field. Send :meth:`ready` when the reload is finished.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec, **_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown started: ``STOPPING=1``."""
        return self.notify(STOPPING=1, **_status(status))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the start/stop timeout: ``EXTEND_TIMEOUT_USEC=``."""
        return self.notify(EXTEND_TIMEOUT_USEC=max(0, round(seconds * 1_000_000)))


def _status(status: str | None) -> dict[str, str]:
    return {} if status is None else {"STATUS": status}


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between keep-alive pings: half of ``WATCHDOG_USEC``, or None when not expected.

    As ``sd_watchdog_enabled(3)``: pings are expected when ``WATCHDOG_USEC`` is a positive
    integer and ``WATCHDOG_PID`` is unset or this process's PID (a child that inherited the
    environment must stay quiet). Pinging at half the timeout is the documented recommendation.

    Examples
    --------
    >>> watchdog_interval({"WATCHDOG_USEC": "30000000"})
    15.0
    >>> watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    True
    >>> watchdog_interval({}) is None
    True
    """
    env = os.environ if environ is None else environ
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if usec is None:
        return None
    try:
        value, owner = int(usec), os.getpid() if pid is None else int(pid)
    except ValueError:
        logger.debug("ignoring WATCHDOG_USEC=%r WATCHDOG_PID=%r: not integers", usec, pid)
        return None
    if value <= 0 or owner != os.getpid():
        return None
    return value / 2_000_000


class Watchdog:
    """Pace ``WATCHDOG=1``: at most once per ``interval``, and only while the daemon is healthy.

    Call :meth:`tick` from the asyncio loop's periodic chore with a monotonic ``now`` (such as
    ``loop.time()``). The pings then prove that the loop runs; a blocked loop stops them and the
    service manager restarts the service. Passing ``healthy=False`` withholds them on purpose.
    Tick at least a few times per ``interval``: the longest gap between pings is ``interval``
    plus one tick period, and must stay under ``WatchdogSec=`` (twice ``interval``).

    Parameters
    ----------
    notifier
        Where the pings go.
    interval
        Seconds between pings, normally :func:`watchdog_interval`; None disables the watchdog.

    Examples
    --------
    >>> class Recorder(Notifier):
    ...     def send(self, text):
    ...         print(text)
    ...         return True
    >>> dog = Watchdog(Recorder("/run/systemd/notify"), interval=15.0)
    >>> [dog.tick(now, healthy=True) for now in (0.0, 5.0, 14.9, 15.0, 20.0)]
    WATCHDOG=1
    WATCHDOG=1
    [True, False, False, True, False]
    >>> dog.tick(40.0, healthy=False)
    False
    >>> dog.tick(41.0, healthy=True)
    WATCHDOG=1
    True
    """

    def __init__(self, notifier: Notifier, interval: float | None) -> None:
        if interval is not None and interval <= 0:
            raise ValueError(f"interval: got {interval!r}, expected a positive number of seconds")
        self.notifier = notifier
        self.interval = interval
        self._reset()

    @classmethod
    def from_environ(cls, notifier: Notifier, environ: Mapping[str, str] | None = None) -> Watchdog:
        """A watchdog paced by ``WATCHDOG_USEC``/``WATCHDOG_PID`` from ``environ``."""
        return cls(notifier, watchdog_interval(environ))

    def _reset(self) -> None:
        self._last_ping: float | None = None
        self._withholding = False

    @property
    def enabled(self) -> bool:
        """Whether the service manager expects pings and they can be sent."""
        return self.interval is not None and self.notifier.enabled

    @property
    def last_ping(self) -> float | None:
        """The ``now`` of the last ping that was sent, or None before the first."""
        return self._last_ping

    def tick(self, now: float, healthy: bool) -> bool:
        """Send ``WATCHDOG=1`` if one is due and the daemon is healthy; return whether it was."""
        if self.interval is None or not self.notifier.enabled:
            return False
        if not healthy:
            if not self._withholding:
                logger.warning(
                    "withholding watchdog pings while the daemon is unhealthy;"
                    " the service manager restarts it after its watchdog timeout"
                )
            self._withholding = True
            return False
        if self._withholding:
            logger.info("healthy again, watchdog pings resume")
            self._withholding = False
        if self._last_ping is not None and now - self._last_ping < self.interval:
            return False
        if not self.notifier.watchdog():
            return False
        self._last_ping = now
        return True
