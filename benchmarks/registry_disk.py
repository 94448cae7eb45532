"""Registry disk use after many deploys, with the demo's model and the default retention.

Fits the demo's model once (``driftd/data/demo.toml``: HistGradientBoosting, 100 iterations,
trained on the bootstrap's 5,000 records of river's Agrawal stream), then deploys that artifact
``--deploys`` times through the lifecycle a daemon runs (publish, verify, warm up, move the
alias, delete what retention lets go), every hundredth deploy followed by a rollback, and prints
the most versions and bytes ``models/`` ever held after a deploy, and what it holds at the end
(file sizes, and blocks allocated). Predictions run on one thread, as in the daemon.

Run by hand:  .venv/bin/python benchmarks/registry_disk.py [--deploys 1000] [--keep-versions 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from threadpoolctl import threadpool_limits

from driftd.cli import demo_config_path
from driftd.config import load
from driftd.ingest.streams import SyntheticStream
from driftd.metrics import Metrics
from driftd.models.inputs import rows_to_matrix
from driftd.models.lifecycle import Lifecycle
from driftd.models.registry import Registry
from driftd.models.retention import Retention
from driftd.models.serving import Serving
from driftd.retrain.fit import FitJob, fit_and_dump
from driftd.store import SQLiteStore


def disk(root: Path) -> tuple[int, int]:
    """Bytes in the files under ``root`` and bytes of blocks allocated to them."""
    size = blocks = 0
    for folder, _, files in os.walk(root):
        for name in files:
            st = os.stat(Path(folder) / name)
            size, blocks = size + st.st_size, blocks + st.st_blocks * 512
    return size, blocks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deploys", type=int, default=1000)
    ap.add_argument("--keep-versions", type=int, default=Retention().keep_versions)
    args = ap.parse_args()
    cfg = load(demo_config_path())
    schema = cfg.schema_obj()
    boot = cfg.bootstrap
    stream = SyntheticStream(cfg.demo.stream, (cfg.demo.concepts[0],), boot.rows, boot.seed)
    rows = stream.take(boot.rows)
    X = rows_to_matrix(schema, [features for features, _ in rows])
    fit = fit_and_dump(FitJob(cfg.model, schema, X, [label for _, label in rows]))
    assert fit.ok, fit.error
    warm = X[: cfg.model.warmup_rows]
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        store = SQLiteStore(state / "driftd.sqlite3", schema).open()
        registry = Registry(state / "models")
        models = Lifecycle(
            registry, Serving(), store, Metrics(), schema, retention=Retention(args.keep_versions)
        )
        models.open()
        start = time.monotonic()
        first = models.deploy(fit.artifact, {"reason": "benchmark"}, warm)
        assert models.current is not None
        model = models.current.model
        peak_versions, peak_bytes = 1, 0
        with threadpool_limits(1):
            for n in range(1, args.deploys):
                models.deploy(fit.artifact, {"reason": "benchmark"}, warm, model=model)
                if n % 100 == 0:
                    models.rollback(None, details={"reason": "benchmark"})
                peak_versions = max(peak_versions, len(registry.numbers()))
                peak_bytes = max(peak_bytes, disk(registry.root)[1])
        took = time.monotonic() - start
        size, blocks = disk(registry.root)
        deleted = len(store.events(kind="model_deleted", limit=args.deploys))
        left = len(registry.numbers())
        store.close()
    mb = 1024 * 1024
    artifact = first.manifest["size"]
    print(
        f"{args.deploys} deploys in {took:.1f} s, keep_versions {args.keep_versions},"
        f" artifact {artifact / mb:.2f} MiB ({artifact:,} bytes)"
    )
    print(f"at most {peak_versions} versions, {peak_bytes / mb:.1f} MiB allocated after a deploy")
    print(
        f"at the end: {left} versions, {size / mb:.1f} MiB in files ({blocks / mb:.1f} MiB"
        f" allocated), {deleted} model_deleted events; without retention:"
        f" {args.deploys * artifact / mb:.0f} MiB of artifacts"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
