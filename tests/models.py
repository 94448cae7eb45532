"""Estimator factories for tests, imported by the training child through ``model.factory``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from sklearn.linear_model import LogisticRegression


def slow_when_flagged() -> Any:
    """A plain logistic regression, but building it sleeps while the file named by
    ``DRIFTD_TEST_SLOW_FLAG`` exists: for ``DRIFTD_TEST_SLOW_SECONDS`` (default a minute, a
    training run that overruns its timeout; a few seconds, one that a shutdown cuts short)."""
    flag = os.environ.get("DRIFTD_TEST_SLOW_FLAG")
    if flag and Path(flag).exists():
        time.sleep(float(os.environ.get("DRIFTD_TEST_SLOW_SECONDS", "60")))
    return LogisticRegression(max_iter=200)
