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
import threading
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
        ("retrain", "ask a running daemon to retrain now"),
        ("rollback", "make a running daemon serve its previous (or a named) version"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument(
            "--url", default=os.environ.get("DRIFTD_URL", DEFAULT_URL), help="daemon URL"
        )
        scope = "operate" if name in ("retrain", "rollback") else "read"
        s.add_argument(
            "--token",
            default=os.environ.get("DRIFTD_TOKEN") or os.environ.get("DRIFTD_SERVER_TOKEN"),
            help=f"bearer token with the {scope} scope"
            " (default: $DRIFTD_TOKEN or $DRIFTD_SERVER_TOKEN)",
        )
        if name == "events":
            s.add_argument("--kind", default=None, help="only events of this kind")
            s.add_argument("--limit", type=int, default=20)
        if name == "rollback":
            s.add_argument("--version", type=int, default=None, help="version to serve")

    rp = sub.add_parser(
        "replay",
        help="replay a history file through the monitor, retraining, gate and swap (offline)",
        description="Play a history file (CSV, JSONL; Parquet with pyarrow) through the daemon's"
        " own monitor, trigger policy, training, gate and swap on a simulated clock, in a"
        " temporary state directory. See docs/replay.md.",
    )
    rp.add_argument("data", type=Path, metavar="DATA", help="history file (.csv, .jsonl)")
    rp.add_argument("--config", "-c", required=True, type=Path, help="path to the TOML config")
    rp.add_argument("--report", type=Path, default=None, help="write the HTML report here")
    rp.add_argument("--json", default=None, help="write the JSON result here ('-': stdout)")
    rp.add_argument("--seed", type=int, default=None, help="seed of the monitor and the model")
    lag = rp.add_mutually_exclusive_group()
    lag.add_argument(
        "--label-lag", type=float, default=None, help="seconds from a record to its label (0)"
    )
    lag.add_argument(
        "--label-delay-column", default=None, help="column with each row's label delay (seconds)"
    )
    rp.add_argument(
        "--inline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fit in this process (default) rather than a spawned child per retrain",
    )
    rp.add_argument(
        "--drift-points",
        default=None,
        help="comma-separated 0-based indices of true change points (default: the drift column)",
    )
    rp.add_argument("--drift-column", default="drift", help="column marking true change points")
    rp.add_argument(
        "--detection-delay",
        type=int,
        default=2000,
        help="records after a true change point within which an alarm detects it (2000)",
    )
    rp.add_argument(
        "--rate", type=float, default=1.0, help="records per second without timestamps (1)"
    )
    rp.add_argument("--batch", type=int, default=20, help="records per predict call (20)")
    rp.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: on a terminal)",
    )
    rp.add_argument("--verbose", "-v", action="store_true", help="log retrains and alarms")
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
        if args.command == "replay":
            return _replay(args)
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
    from driftd.errors import DriftdError
    from driftd.service import logs
    from driftd.service.daemon import Daemon

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
    from driftd.config import StateConfig
    from driftd.offline.demo import DemoSource, LiveView, summary
    from driftd.service import logs
    from driftd.service.daemon import Daemon

    config = _load_or_exit(args.config or demo_config_path())
    with contextlib.ExitStack() as stack:
        state = args.state_dir
        if state is None:
            state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="driftd-demo-")))
        state = Path(state).resolve()
        changes: dict[str, Any] = {"state": StateConfig(dir=str(state))}
        if args.port is not None:
            changes["server"] = dataclasses.replace(config.server, port=args.port)
        config = dataclasses.replace(config, **changes)
        tty = sys.stderr.isatty() and config.log.format != "json"
        if tty:
            # The live view owns the terminal; the log goes to a file beside the state.
            state.mkdir(parents=True, exist_ok=True)
            logs.configure(config.log.level, "text", path=state / "driftd.log")
        else:
            logs.configure(config.log.level, config.log.format)
        sources: list[DemoSource] = []
        views: list[LiveView] = []

        def started(daemon: Daemon) -> None:
            assert daemon.parts is not None  # called once the daemon has started
            cert = config.server.tls_certfile
            tokens = {scope: next(iter(t), None) for scope, t in config.scope_tokens().items()}
            source = DemoSource(
                daemon.parts,
                config.demo,
                url=f"{'https' if cert else 'http'}://127.0.0.1:{daemon.port}",
                tokens=tokens,
                cafile=str(config.resolve(cert)) if cert else None,
                report=None if tty else _log_progress,
            )
            sources.append(source)
            daemon.attach(source)
            print(
                f"driftd demo: http://{config.server.host}:{daemon.port}  (metrics at /metrics,"
                f" status at /v1/status; state in {state}"
                + (f", log in {state / 'driftd.log'}" if tty else "")
                + "); Ctrl-C to stop",
                file=sys.stderr,
            )
            if tty:
                view = LiveView(source)
                views.append(view)
                view.start()
            if args.duration is not None:
                timer = threading.Timer(args.duration, daemon.request_exit)
                timer.daemon = True
                timer.start()

        daemon = Daemon(config, on_started=started)
        code = daemon.run()
        for view in views:
            view.close()
            view.draw()
        if sources and daemon.parts is not None:
            print(summary(daemon.parts, sources[0]), file=sys.stderr)
        return code


def _log_progress(line: str) -> None:
    import logging

    logging.getLogger("driftd.offline.demo").info("%s", line)


def _replay(args: argparse.Namespace) -> int:
    """``driftd replay``: exit 0 done, 1 the replay failed, 2 bad usage, config or file."""
    import logging

    from driftd.ingest.history import HistoryError
    from driftd.offline.replay import ReplayOptions, replay
    from driftd.service import logs

    config = _load_or_exit(args.config)
    logs.configure("info" if args.verbose else "error", "text")
    level = logging.INFO if args.verbose else logging.ERROR
    logging.getLogger("driftd.service.engine").setLevel(level)
    try:
        points = (
            None
            if args.drift_points is None
            else tuple(int(p) for p in args.drift_points.split(",") if p.strip())
        )
    except ValueError:
        print(
            f"driftd replay: --drift-points: expected integers, got {args.drift_points!r}",
            file=sys.stderr,
        )
        return 2
    if args.rate <= 0 or args.batch < 1 or args.detection_delay < 0:
        print(
            "driftd replay: --rate must be > 0, --batch >= 1, --detection-delay >= 0",
            file=sys.stderr,
        )
        return 2
    if args.label_lag is not None and args.label_lag < 0:
        print("driftd replay: --label-lag must be >= 0", file=sys.stderr)
        return 2
    options = ReplayOptions(
        seed=args.seed,
        label_lag=args.label_lag,
        label_delay_column=args.label_delay_column,
        inline=args.inline,
        drift_points=points,
        drift_column=args.drift_column,
        detection_delay=args.detection_delay,
        rate=args.rate,
        batch=args.batch,
        progress=args.progress,
    )
    if args.report is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "driftd replay: --report needs matplotlib: pip install 'driftd[report]'",
                file=sys.stderr,
            )
            return 2
    try:
        result = replay(args.data, config, options)
    except (HistoryError, OSError) as exc:
        print(f"driftd replay: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"driftd replay: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=2, allow_nan=False)
    if args.json == "-":
        print(text)
    elif args.json is not None:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    if args.report is not None:
        from driftd.offline.report import write_report

        write_report(result, args.report)
    score = result["score"]
    outcomes = [r["outcome"] for r in result["retrains"]]
    drift = result["drift"]
    print(
        f"driftd replay: {result['input']['records']} records in"
        f" {result['wall_clock']['seconds']:.1f} s; {score['metric']} {score['overall']:.4f};"
        f" {len(result['alarms'])} alarm(s), {len(outcomes)} retrain(s),"
        f" {outcomes.count('deployed')} deployed, {len(result['rollbacks'])} rollback(s)"
        + (
            ""
            if drift is None
            else f"; {len(drift['points']) - len(drift['missed'])}/{len(drift['points'])} drifts"
            f" detected, {drift['false_alarms']} false alarm(s)"
        ),
        file=sys.stderr,
    )
    return 0


def _act(args: argparse.Namespace) -> int:
    path = "/v1/retrain" if args.command == "retrain" else "/v1/rollback"
    body = {"version": args.version} if args.command == "rollback" and args.version else {}
    headers = {"Content-Type": "application/json", **_bearer(args.token)}
    req = urllib.request.Request(  # noqa: S310 - the operator's URL
        args.url.rstrip("/") + path, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    return _request(req)


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


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
    url = args.url.rstrip("/") + path
    return _request(urllib.request.Request(url, headers=_bearer(args.token)))  # noqa: S310


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
