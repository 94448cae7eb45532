"""The replay report: a self-contained HTML page that a browser renders with its figures."""

from __future__ import annotations

import base64
import io
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from driftd.config import load
from driftd.offline.replay import ReplayOptions, replay
from driftd.offline.report import render_html, write_report
from tests.conftest import require_tool
from tests.test_replay import config_file, write_stream

matplotlib_image = pytest.importorskip("matplotlib.image")

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("report")
    data = write_stream(tmp / "stream <&> 1.csv", 4000)
    return replay(data, load(config_file(tmp)), ReplayOptions(seed=1, progress=False))


@pytest.fixture(scope="module")
def page(result: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("page") / "report.html"
    write_report(result, path)
    return path


def _pngs(text: str) -> list[np.ndarray]:
    return [
        matplotlib_image.imread(io.BytesIO(base64.b64decode(m)), format="png")
        for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    ]


def test_the_page_is_self_contained_with_both_figures_inline(page: Path) -> None:
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    # Nothing is fetched: no external script, stylesheet or image.
    assert not re.search(r"""(src|href)=["'](https?:|//)""", text)
    images = _pngs(text)
    assert len(images) == 2
    for img in images:
        assert img.shape[0] > 300 and img.shape[1] > 1000
        assert float(img[..., :3].std()) > 0.05, "a figure is blank"


def test_the_page_shows_the_retrains_alarms_and_segments(
    result: dict[str, Any], page: Path
) -> None:
    text = page.read_text()
    for r in result["retrains"]:
        assert f"<td>{r['job']}</td>" in text
    assert text.count('class="deployed"') == sum(
        r["outcome"] == "deployed" for r in result["retrains"]
    )
    assert "concept_drift" in text
    assert "true drifts detected" in text and "false alarms" in text
    for seg in result["score"]["segments"]:
        assert f"<td>v{seg['version']}</td>" in text
    # The file name is escaped, not interpreted.
    assert "stream &lt;&amp;&gt; 1.csv" in text and "stream <&>" not in text


def test_a_replay_without_retrains_or_drift_points_renders_placeholders(
    result: dict[str, Any],
) -> None:
    quiet = {**result, "retrains": [], "alarms": [], "detections": [], "drift": None}
    text = render_html(quiet)
    assert "No retrain ran." in text and "No drift alarm." in text
    assert "false alarms" not in text
    assert len(_pngs(text)) == 2


def _chromium(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    exe = require_tool("chromium")
    return subprocess.run(
        [
            exe,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp / 'profile'}",
            *extra,
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_headless_chromium_renders_the_report_with_its_figures(page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    proc = _chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 10_000
    pixels = matplotlib_image.imread(shot)
    assert pixels.shape[:2] == (2400, 1280)
    rgb = pixels[..., :3]
    assert float(rgb.std()) > 0.05, "the screenshot is blank"
    # The figures drew: a good share of the page is neither white nor near-white.
    ink = (rgb.mean(axis=2) < 0.85).mean()
    assert ink > 0.02, f"only {ink:.1%} of the page has ink"

    dom = _chromium(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('<img alt="') == 2
    assert dom.stdout.count('src="data:image/png;base64,') == 2
    # The page's load handler counted the images the browser decoded (naturalWidth > 0).
    assert 'data-figures="2"' in dom.stdout
