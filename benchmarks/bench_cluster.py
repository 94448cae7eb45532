"""Figure 8: scaling out, the PostgreSQL store beside the embedded SQLite one, on one host.

Each figure is the median (min-max) of --runs runs; every run starts a private PostgreSQL on
127.0.0.1 (tests/services.py: no fsync, as the tests run it, so the figures are the store's
code and the protocol, not the disk) and measures both backends in the same run.

  store      records/s of ``add_records`` alone, 20 numeric features, batches of 1, 100 and
             1,000 records: SQLite (WAL) beside PostgreSQL; and PostgreSQL with 1, 2 and 4
             writers on one namespace at once (daemons of one model sharing it: the writers
             take the namespace's lock in turn, so the curve is flat by design);
  daemon     records/s through HTTP ``POST /v1/records`` of one daemon, 1,000-record batches,
             one client: on SQLite, and as the leader of a model on PostgreSQL (it reads
             every batch back to monitor it);
  jetstream  records/s through JetStream end to end: from the first publish of 60 messages of
             1,000 records (all in flight at once) to a ready daemon until it has stored
             them all, each acknowledged after its commit, on SQLite and on PostgreSQL,
             beside the same bodies through HTTP (one client) in the same run;
  models     N models on one host, each a leader and a standby, N = 1, 2, 5, 10: aggregate
             records/s of one client per model posting 100-record batches to its two daemons
             in turn, and the memory of all the daemons. Each daemon is an instance of the
             template unit ``systemd/driftd@.service`` as two hosts would run it: the
             command line of its ``ExecStart=`` and the variables of its ``Environment=``,
             read from the unit file with ``%i`` the model's name, and what ``StateDirectory=``
             and ``WorkingDirectory=`` give it (``$STATE_DIRECTORY``, ``%S/driftd/%i``). There
             is no systemd to start them here, so the unit's install paths move under a
             directory per host (``/etc/driftd/<model>.toml`` there; ``/opt/driftd/.venv`` is
             the virtualenv running the benchmark), the sandboxing is not applied, nor
             ``WatchdogSec=`` nor ``Type=notify``, and the logs go to a pipe, as JSON. Before
             the clock starts, every model has exactly one leader and one standby
             (``GET /v1/status`` -> ``cluster.role``).

Run by hand:  .venv/bin/python benchmarks/bench_cluster.py [--runs 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import ROOT, Daemon, fmt, machine, rss_mb
from bench_http import BATCH, N_FEATURES, ingest, rows, write_boot
from bench_http import config as http_config
from tests.services import NatsServer, PostgresServer


def schema() -> Any:
    from driftd.ingest.schema import Feature, Schema

    return Schema(tuple(Feature(f"f{i}") for i in range(N_FEATURES)))


def batches(size: int, n: int, seed: int, prefix: str) -> list[Any]:
    from driftd.ingest.batch import Batch

    out = []
    data = rows(size * n, seed)
    for k in range(n):
        part = data[k * size : (k + 1) * size]
        ids = [f"{prefix}{k}-{i}" for i in range(len(part))]
        out.append(Batch([r["features"] for r in part], 0.0, ids=ids))
    return out


def write_rate(store: Any, work: list[Any]) -> float:
    start = time.perf_counter()
    for batch in work:
        store.add_records(batch, source="records", received=0.0)
    return sum(len(b) for b in work) / (time.perf_counter() - start)


def bench_store(pg: PostgresServer, run: int, quick: bool) -> dict[str, float]:
    from driftd.store import PostgresStore, SQLiteStore

    out: dict[str, float] = {}
    total = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory() as d:
        for size in (1, 100, 1000):
            n = max(20, min(2000, total // size))
            sqlite = SQLiteStore(Path(d) / f"s{size}.sqlite3", schema(), checkpoint_every=0.5)
            postgres = PostgresStore(pg.url(), schema(), namespace=f"bench_{run}_{size}")
            for name, store in (("sqlite", sqlite), ("postgres", postgres)):
                store.open()
                try:
                    write_rate(store, batches(size, 5, 1, "w"))  # warm up
                    out[f"{name}_batch{size}"] = write_rate(store, batches(size, n, 2, "m"))
                finally:
                    store.close()
        for writers in (1, 2, 4):
            stores = [
                PostgresStore(pg.url(), schema(), namespace=f"bench_{run}_w{writers}").open()
                for _ in range(writers)
            ]
            work = [batches(100, 100 if quick else 300, 3 + w, f"x{w}-") for w in range(writers)]
            threads = [
                threading.Thread(target=write_rate, args=(s, w))
                for s, w in zip(stores, work, strict=True)
            ]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            out[f"postgres_writers{writers}"] = sum(len(b) for w in work for b in w) / (
                time.perf_counter() - start
            )
            for s in stores:
                s.close()
    return out


def daemon_config(tmp: Path, name: str, store: str) -> Path:
    cfg = tmp / f"{name}.toml"
    text = http_config(tmp / f"state-{name}", write_boot(tmp / "boot.csv"))
    cfg.write_text(text.replace("[store]\n", f"[store]\n{store}\n", 1))
    return cfg


def bench_daemon(pg: PostgresServer, run: int, quick: bool) -> dict[str, float]:
    n = 20 if quick else 60
    bodies = [json.dumps(rows(BATCH, 100 + k)).encode() for k in range(n)]
    out = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        setups = {
            "sqlite": "",
            "postgres": f'url = "{pg.url()}"\nnamespace = "bench_d{run}"',
        }
        for name, store in setups.items():
            with Daemon(daemon_config(tmp, name, store)) as daemon:
                out[name] = ingest(daemon.url, bodies)
    return out


def publish(url: str, subject: str, bodies: list[bytes]) -> None:
    """Publish ``bodies`` to JetStream, all in flight at once (each awaits its ack)."""
    import asyncio

    import nats

    async def go() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            await asyncio.gather(*(js.publish(subject, body, timeout=60) for body in bodies))
        finally:
            await nc.close()

    asyncio.run(go())


def stored(daemon: Daemon) -> int:
    import httpx

    return int(httpx.get(f"{daemon.url}/v1/status", timeout=10).json()["store"]["records"])


def bench_jetstream(pg: PostgresServer, run: int, quick: bool) -> dict[str, float]:
    """Records/s end to end through JetStream: from the first publish of ``n`` 1,000-record
    messages to a ready daemon until it has stored them all (each acked after its commit)."""
    n = 20 if quick else 60
    out = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = NatsServer(tmp).start()
        try:
            for name, store in (
                ("sqlite", ""),
                ("postgres", f'url = "{pg.url()}"\nnamespace = "bench_j{run}"'),
            ):
                model = f"{name}{run}"
                bodies = [
                    json.dumps(
                        [{"id": f"{model}-{k}-{i}", **r} for i, r in enumerate(rows(BATCH, k))]
                    ).encode()
                    for k in range(n)
                ]
                source = f'\n[source]\nkind = "nats"\nurl = "{broker.url}"\nmodel = "{model}"\n'
                cfg = daemon_config(tmp, f"j{name}", store)
                cfg.write_text(cfg.read_text() + source)
                with Daemon(cfg) as daemon:
                    start = time.perf_counter()
                    publish(broker.url, f"driftd.{model}.records", bodies)
                    while stored(daemon) < n * BATCH:  # bootstrap rows are not in the store
                        time.sleep(0.01)
                    out[f"jetstream_{name}"] = n * BATCH / (time.perf_counter() - start)
            with Daemon(daemon_config(tmp, "jhttp", "")) as daemon:
                out["http_sqlite"] = ingest(daemon.url, bodies)
        finally:
            broker.stop()
    return out


def _post_in_turn(
    pair: list[Daemon], bodies: list[bytes], sent: list[int], m: int, stop: threading.Event
) -> None:
    """One model's client: 100-record batches to its two daemons in turn, until ``stop``."""
    import httpx

    k = 0
    with httpx.Client(timeout=60) as c:
        while not stop.is_set():
            answer = c.post(
                f"{pair[k % 2].url}/v1/records",
                content=bodies[k % len(bodies)],
                headers={"Content-Type": "application/json"},
            )
            if answer.status_code == 200:
                sent[m] += 100
            k += 1


#: The template unit each model's daemons are instances of.
UNIT = ROOT / "systemd" / "driftd@.service"
#: Where the unit expects driftd installed (``ExecStart=``): the benchmark's own virtualenv.
UNIT_VENV = "/opt/driftd/.venv/"


def unit_service(path: Path = UNIT) -> tuple[str, dict[str, str]]:
    """``ExecStart=`` (unexpanded) and the ``Environment=`` assignments of a unit's
    ``[Service]`` section."""
    section, exec_start, env = "", "", {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            if key == "ExecStart":
                exec_start = value
            elif key == "Environment":
                for item in shlex.split(value):
                    name, _, setting = item.partition("=")
                    env[name] = setting
    if not exec_start:
        raise ValueError(f"{path}: no ExecStart= in [Service]")
    return exec_start, env


def instance(model: str, host: Path) -> tuple[list[str], dict[str, str], Path]:
    """What systemd would run for ``driftd@<model>`` on ``host``: the command line, the
    environment it adds, the working directory. The unit's absolute paths are moved under
    ``host`` (its ``/opt/driftd/.venv`` is this virtualenv)."""
    exec_start, env = unit_service()

    def moved(word: str) -> str:
        if word.startswith(UNIT_VENV):
            return str(Path(sys.prefix) / word.removeprefix(UNIT_VENV))
        return str(host / word.lstrip("/")) if word.startswith("/") else word

    argv = [moved(word) for word in shlex.split(exec_start.replace("%i", model))]
    state = host / "var" / "lib" / "driftd" / model  # StateDirectory=driftd/%i under %S
    state.mkdir(parents=True, exist_ok=True)
    return argv, {**env, "STATE_DIRECTORY": str(state)}, state


def unit_instance(tmp: Path, host: str, model: str, store: str) -> Daemon:
    """``driftd@<model>`` on ``host``, its config where the unit reads it."""
    argv, env, cwd = instance(model, tmp / f"host-{host}")
    config = Path(argv[argv.index("--config") + 1])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(daemon_config(tmp, f"{host}-{model}", store).read_text())
    return Daemon(config, argv=argv, env=env, cwd=cwd)


def roles(pair: list[Daemon]) -> list[str]:
    import httpx

    return [
        str(httpx.get(f"{d.url}/v1/status", timeout=10).json()["cluster"]["role"]) for d in pair
    ]


def bench_models(pg: PostgresServer, counts: list[int], seconds: float, run: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in counts:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            daemons: list[list[Daemon]] = []
            try:
                for m in range(n):
                    model = f"model{m}"
                    store = f'url = "{pg.url()}"\nnamespace = "bench_m{run}_{n}_{m}"'
                    pair = [unit_instance(tmp, host, model, store) for host in ("a", "b")]
                    daemons.append(pair)
                    for daemon in pair:  # host a's first: it takes the lock and leads
                        daemon.start()
                for m, pair in enumerate(daemons):  # one leader and one standby per model
                    found = roles(pair)
                    if sorted(found) != ["leader", "standby"]:
                        raise RuntimeError(f"model{m} of {n}: roles {found}, not a leader+standby")
                bodies = [json.dumps(rows(100, 500 + k)).encode() for k in range(50)]
                sent = [0] * n
                stop = threading.Event()

                threads = [
                    threading.Thread(
                        target=_post_in_turn, args=(pair, bodies, sent, m, stop), daemon=True
                    )
                    for m, pair in enumerate(daemons)
                ]
                for t in threads:
                    t.start()
                time.sleep(1.0)  # warm up
                before = sum(sent)
                time.sleep(seconds)
                rate = (sum(sent) - before) / seconds
                stop.set()
                for t in threads:
                    t.join()
                rss = sum(rss_mb(daemon.pid)["rss"] for pair in daemons for daemon in pair)
                out[str(n)] = {"records_per_s": rate, "rss_mb": rss}
            finally:
                for pair in daemons:
                    for daemon in pair:
                        daemon.stop()
    return out


def run(runs: int = 3, quick: bool = False, only: str | None = None) -> dict[str, Any]:
    """Every part (or ``only`` one), ``runs`` times; a machine without PostgreSQL or
    nats-server gives an error result instead of the figures."""
    import pytest

    # The machines are shared: the load around the run says how much of it was this run.
    load = {"start": os.getloadavg()}
    counts = [1, 2] if quick else [1, 2, 5, 10]
    results: dict[str, Any] = {"store": [], "daemon": [], "jetstream": [], "models": []}
    try:
        for run in range(runs):
            pg = PostgresServer().start()
            try:
                if only in (None, "store"):
                    results["store"].append(bench_store(pg, run, quick))
                if only in (None, "daemon"):
                    results["daemon"].append(bench_daemon(pg, run, quick))
                if only in (None, "jetstream"):
                    results["jetstream"].append(bench_jetstream(pg, run, quick))
                if only in (None, "models"):
                    results["models"].append(bench_models(pg, counts, 5.0 if quick else 15.0, run))
            finally:
                pg.close()
            load[f"after run {run + 1}"] = os.getloadavg()
    except pytest.skip.Exception as exc:  # tests/services.py found no server to start
        return {"error": str(exc)}
    results["counts"] = counts
    results["load"] = load
    return results


def show(results: dict[str, Any]) -> None:
    counts = results["counts"]
    print("load average (1, 5, 15 min): " + json.dumps(results["load"]))
    if results["store"]:
        print("\nstore writes, records/s (add_records alone, 20 numeric features)")
        keys = results["store"][0].keys()
        for key in keys:
            values = [r[key] for r in results["store"]]
            print(f"  {key:<20} {fmt(values)}")
        for size in (1, 100, 1000):
            ratio = [
                r[f"postgres_batch{size}"] / r[f"sqlite_batch{size}"] for r in results["store"]
            ]
            print(f"  postgres / sqlite, batch {size:<5} {fmt(ratio, 2)}")
    if results["daemon"]:
        print("\nHTTP ingest of one daemon, records/s (1,000-record batches, one client)")
        for key in ("sqlite", "postgres"):
            print(f"  {key:<10} {fmt([r[key] for r in results['daemon']])}")
        ratio = [r["postgres"] / r["sqlite"] for r in results["daemon"]]
        print(f"  postgres / sqlite {fmt(ratio, 2)}")
    if results["jetstream"]:
        print("\nrecords/s through JetStream, publish to stored (1,000-record messages), and HTTP")
        for key in ("jetstream_sqlite", "jetstream_postgres", "http_sqlite"):
            print(f"  {key:<20} {fmt([r[key] for r in results['jetstream']])}")
        ratio = [r["jetstream_sqlite"] / r["http_sqlite"] for r in results["jetstream"]]
        print(f"  jetstream / http, SQLite {fmt(ratio, 2)}")
    if results["models"]:
        print("\nN models on one host, a leader and a standby each (100-record batches)")
        base = [r["1"]["records_per_s"] for r in results["models"]]
        for n in counts:
            rate = [r[str(n)]["records_per_s"] for r in results["models"]]
            rss = [r[str(n)]["rss_mb"] for r in results["models"]]
            scale = [a / b for a, b in zip(rate, base, strict=True)]
            print(
                f"  {n:>2} models: {fmt(rate)} records/s (x{fmt(scale, 2)} of one model),"
                f" daemons' RSS {fmt(rss)} MiB"
            )
    print("\nraw: " + json.dumps({k: v for k, v in results.items() if v}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer rows and models")
    parser.add_argument("--only", choices=["store", "daemon", "jetstream", "models"], default=None)
    args = parser.parse_args()
    print(json.dumps(machine()))
    results = run(args.runs, args.quick, args.only)
    if "error" in results:
        sys.exit(f"figure 8: {results['error']}")
    show(results)


if __name__ == "__main__":
    main()
