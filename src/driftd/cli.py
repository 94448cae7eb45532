"""The ``driftd`` command: run, demo, check-config, and read-only views of a running daemon.

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error. The read-only
commands (status, models, events) call the daemon's HTTP API rather than opening its files, so
that they never duplicate what the API does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from driftd import __version__

__all__ = ["main"]

DEFAULT_URL = "http://127.0.0.1:8765"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="driftd",
        description="Serve a scikit-learn model, watch it for drift, retrain and redeploy it.",
    )
    p.add_argument("--version", action="version", version=f"driftd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the daemon with a config file")
    run.add_argument("--config", "-c", required=True, type=Path, help="path to the TOML config")

    demo = sub.add_parser("demo", help="run the daemon on the embedded demo: a drifting stream")
    demo.add_argument(
        "--port", type=int, default=None, help="port to listen on (default: the config's, 8765)"
    )
    demo.add_argument(
        "--state-dir", type=Path, default=None, help="state directory (default: a temporary one)"
    )
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        help="a config to use instead of the embedded one",
    )

    check = sub.add_parser("check-config", help="validate a config file, listing every error")
    check.add_argument("path", type=Path)

    for name, text in (
        ("status", "show a running daemon's status"),
        ("models", "list a running daemon's model versions"),
        ("events", "show a running daemon's audit log, newest first"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument(
            "--url", default=os.environ.get("DRIFTD_URL", DEFAULT_URL), help="daemon URL"
        )
        if name == "events":
            s.add_argument("--kind", default=None, help="only events of this kind")
            s.add_argument("--limit", type=int, default=20)
    for name, text in (
        ("retrain", "ask a running daemon to retrain now"),
        ("rollback", "make a running daemon serve its previous (or a named) version"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument(
            "--url", default=os.environ.get("DRIFTD_URL", DEFAULT_URL), help="daemon URL"
        )
        s.add_argument(
            "--token",
            default=os.environ.get("DRIFTD_TOKEN") or os.environ.get("DRIFTD_SERVER_TOKEN"),
            help="bearer token (default: $DRIFTD_TOKEN or $DRIFTD_SERVER_TOKEN)",
        )
        if name == "rollback":
            s.add_argument("--version", type=int, default=None, help="version to serve")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            return _check_config(args.path)
        if args.command == "run":
            return _run(args.config)
        if args.command == "demo":
            return _demo(args)
        if args.command in ("retrain", "rollback"):
            return _act(args)
        return _show(args)
    except KeyboardInterrupt:
        return 130


def _check_config(path: Path) -> int:
    from driftd.config import load
    from driftd.errors import ConfigError

    try:
        load(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.errors)} error(s)", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        return 2
    print(f"{path}: ok")
    return 0


def _load_or_exit(path: Path) -> Any:
    from driftd.config import load
    from driftd.errors import ConfigError

    try:
        return load(path)
    except ConfigError as exc:
        print(f"{path}: refusing to start, {len(exc.errors)} config error(s)", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _run(path: Path) -> int:
    from driftd import logs
    from driftd.daemon import Daemon
    from driftd.errors import DriftdError

    config = _load_or_exit(path)
    logs.configure(config.log.level, config.log.format)
    try:
        return Daemon(config).run()
    except DriftdError as exc:
        print(f"driftd: {exc}", file=sys.stderr)
        return 1


def demo_config_path() -> Path:
    return Path(str(resources.files("driftd") / "data" / "demo.toml"))


def _demo(args: argparse.Namespace) -> int:
    from driftd import logs
    from driftd.config import StateConfig
    from driftd.daemon import Daemon
    from driftd.demo import DemoSource

    config = _load_or_exit(args.config or demo_config_path())
    with contextlib.ExitStack() as stack:
        state = args.state_dir
        if state is None:
            state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="driftd-demo-")))
        changes: dict[str, Any] = {"state": StateConfig(dir=str(Path(state).resolve()))}
        if args.port is not None:
            changes["server"] = dataclasses.replace(config.server, port=args.port)
        config = dataclasses.replace(config, **changes)
        logs.configure(config.log.level, config.log.format)
        sources: list[DemoSource] = []

        def started(daemon: Daemon) -> None:
            source = DemoSource(daemon.engine, config.demo)
            sources.append(source)
            daemon.attach(source)
            print(
                f"driftd demo: http://{config.server.host}:{daemon.port}  (metrics at /metrics,"
                f" status at /v1/status; state in {state}); Ctrl-C to stop",
                file=sys.stderr,
            )
            if args.duration is not None:
                import threading

                def stop() -> None:
                    daemon.should_exit = True

                timer = threading.Timer(args.duration, stop)
                timer.daemon = True
                timer.start()

        code = Daemon(config, on_started=started).run()
        if sources:
            print(sources[0].progress(), file=sys.stderr)
        return code


def _act(args: argparse.Namespace) -> int:
    path = "/v1/retrain" if args.command == "retrain" else "/v1/rollback"
    body = {"version": args.version} if args.command == "rollback" and args.version else {}
    headers = {"Content-Type": "application/json"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    req = urllib.request.Request(  # noqa: S310 - the operator's URL
        args.url.rstrip("/") + path, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    return _request(req)


def _request(req: urllib.request.Request) -> int:
    url = req.full_url
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - the operator's URL
            data = json.load(resp)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            detail = json.loads(detail).get("message", detail)
        print(f"driftd: {url}: HTTP {exc.code}: {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"driftd: cannot reach {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    json.dump(data, sys.stdout, indent=2)
    print()
    return 0


def _show(args: argparse.Namespace) -> int:
    path = {"status": "/v1/status", "models": "/v1/models", "events": "/v1/events"}[args.command]
    if args.command == "events":
        query = {"limit": args.limit, **({"kind": args.kind} if args.kind else {})}
        path += "?" + urllib.parse.urlencode(query)
    return _request(urllib.request.Request(args.url.rstrip("/") + path))  # noqa: S310


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
