"""The daemon's parts as service/parts.py wires them, on a real state directory."""

from __future__ import annotations

import threading
from pathlib import Path

from driftd.config import load_text
from driftd.metrics import Metrics
from driftd.retrain.fit import fit_and_dump
from driftd.service.parts import WAL_CHECKPOINT_SECONDS, assemble
from tests.conftest import config_text


def test_the_store_copies_its_wal_back_on_a_thread_of_its_own(tmp_path: Path) -> None:
    """Not on whichever write crosses SQLite's 1,000-page mark: the writer keeps only a far
    backstop, and a checkpoint thread runs beside it (figure 2: 0.42 -> 0.48-0.50 of the bare
    loop, p99 of predictions 3.8 -> 3.2 ms)."""
    cfg = load_text(config_text(tmp_path / "state", bootstrap=None), env={})
    parts = assemble(cfg, Metrics(), state_dir=tmp_path / "state", fit=fit_and_dump)
    try:
        assert parts.store.checkpoint_every == WAL_CHECKPOINT_SECONDS
        assert parts.store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 20_000
        assert any(t.name == "driftd-wal" for t in threading.enumerate())
    finally:
        parts.close()
    assert not any(t.name == "driftd-wal" and t.is_alive() for t in threading.enumerate())
