"""The replay report: one self-contained HTML page drawn from a replay's result document.

Pure: :func:`render_html` takes the dict :func:`driftd.offline.replay.replay` returns and gives back
the page as a string; figures are PNGs drawn with matplotlib's Agg canvas (no pyplot, no
display, no global state) and inlined as base64 data URIs, so the file opens anywhere without
a network. matplotlib is optional: ``pip install 'driftd[report]'``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["render_html", "write_report"]

_CSS = """
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
color:#1d2330;background:#fff;padding:0 16px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ccd}
.sub{color:#5a6273;font-size:13px;margin-bottom:16px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #d5d9e2;border-radius:6px;padding:8px 14px;min-width:120px;
background:#f7f8fb}
.card b{display:block;font-size:20px}.card span{font-size:12px;color:#5a6273}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border-bottom:1px solid #e3e6ec;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f6}.num{text-align:right;font-variant-numeric:tabular-nums}
.deployed{color:#1a7f37;font-weight:bold}.rejected{color:#c4510f;font-weight:bold}
.failed,.timeout{color:#b42318;font-weight:bold}.skipped{color:#5a6273}
figure{margin:8px 0}figure img{max-width:100%;height:auto;border:1px solid #e3e6ec}
figcaption{font-size:12px;color:#5a6273}
.note{font-size:12px;color:#5a6273}
"""

# Marks <body data-figures="N"> with the number of figures the browser decoded, so a headless
# browser's --dump-dom shows that the page rendered (tests/test_report.py reads it).
_LOADED = (
    "<script>window.addEventListener('load',function(){var n=0;"
    "for(var i of document.images){if(i.complete&&i.naturalWidth>0)n++;}"
    "document.body.setAttribute('data-figures',String(n));});</script>"
)


def write_report(result: dict[str, Any], path: Path) -> None:
    """Render ``result`` and write the page to ``path``."""
    path.write_text(render_html(result), encoding="utf-8")


def render_html(result: dict[str, Any]) -> str:
    """The report page for a replay result (see docs/replay.md for what it shows)."""
    try:
        from matplotlib.figure import Figure  # noqa: F401 - fail early with a useful message
    except ImportError:
        raise RuntimeError(
            "the HTML report needs matplotlib: pip install 'driftd[report]'"
        ) from None
    inp, score = result["input"], result["score"]
    title = f"driftd replay: {inp['file']}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        '<div class="sub">'
        + _e(
            f"{inp['records']:,} records ({inp['labelled']:,} labelled), config"
            f" {result['config']['source']}, {result['config']['estimator']},"
            f" clock from {'the file' if inp['clock'] == 'file' else 'a fixed rate'},"
            f" seed {result['options']['seed']}, file sha256 {inp['sha256'][:12]}"
        )
        + "</div>",
        _cards(result),
        "<h2>Score over the stream</h2>",
        _img(
            _score_figure(result),
            f"Rolling prequential {score['metric']} (each prediction scored against its label,"
            f" window {result['series']['window']} records) and the monitor's live score, with"
            " drift alarms, retrains, deploys, rejections and rollbacks.",
        ),
        "<h2>Segments between deploys</h2>",
        _segments(result),
        "<h2>Retrains</h2>",
        _retrains(result),
        "<h2>Detector estimates</h2>",
        _img(
            _detector_figure(result),
            "Each detector's estimate sampled over the stream (numeric features: the"
            " detector's estimate of the mean, or KSWIN's statistic; categories and class"
            " predictions: total variation distance from the reference shares; error: the"
            " error detector's estimate). Red dashed lines: detections; green lines: deploys"
            " (every detector starts over).",
        ),
        "<h2>Drift alarms</h2>",
        _alarms(result),
        _LOADED,
        "</body></html>",
    ]
    return "\n".join(parts)


# -- pieces of the page ----------------------------------------------------------------------
def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "-"
    return str(value)


def _cards(result: dict[str, Any]) -> str:
    score = result["score"]
    retrains = result["retrains"]
    outcomes = [r["outcome"] for r in retrains]
    cards = [
        (_fmt(score["overall"]), f"prequential {score['metric']}"),
        (str(len(result["alarms"])), "drift alarms"),
        (str(len(result["detections"])), "detections"),
        (str(len(retrains)), "retrains"),
        (str(outcomes.count("deployed")), "deployed"),
        (str(outcomes.count("rejected")), "rejected"),
        (str(len(result["rollbacks"])), "rollbacks"),
    ]
    drift = result.get("drift")
    if drift is not None:
        found = sum(1 for d in drift["detected"] if d["alarm"] is not None)
        cards.append((f"{found}/{len(drift['points'])}", "true drifts detected"))
        cards.append((str(drift["false_alarms"]), "false alarms"))
    body = "".join(f'<div class="card"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for v, k in cards)
    note = ""
    if drift is not None:
        note = (
            '<p class="note">'
            + _e(
                f"True drift points from {drift['source']}: an alarm counts as detecting a drift"
                f" when it comes within {drift['detection_delay']} records after it; any other"
                " alarm is a false alarm."
            )
            + "</p>"
        )
    return f'<div class="cards">{body}</div>{note}'


def _table(
    head: Sequence[str], rows: Sequence[Sequence[str]], empty: str, numeric: Sequence[int] = ()
) -> str:
    if not rows:
        return f'<p class="note">{_e(empty)}</p>'
    th = "".join(
        f'<th class="num">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
        for i, h in enumerate(head)
    )
    trs = "".join("<tr>" + "".join(rows_i) + "</tr>" for rows_i in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _td(value: Any, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{_e(value)}</td>"


def _segments(result: dict[str, Any]) -> str:
    rows = [
        [
            _td(f"v{s['version']}"),
            _td(s["first_index"], "num"),
            _td(s["last_index"], "num"),
            _td(s["scored"], "num"),
            _td(_fmt(s["score"]), "num"),
        ]
        for s in result["score"]["segments"]
    ]
    metric = result["score"]["metric"]
    return _table(
        ["model", "first record", "last record", "scored", metric],
        rows,
        "No record was predicted.",
        numeric=(1, 2, 3, 4),
    )


def _retrains(result: dict[str, Any]) -> str:
    metric = result["config"]["metric"]
    rows = []
    for r in result["retrains"]:
        scores = r.get("scores") or {}
        verdict = r.get("verdict") or {}
        failed = [x["reason"] for x in verdict.get("rules", []) if not x["passed"]]
        why = "; ".join(failed) or r.get("skipped") or r.get("error") or ""
        outcome = r.get("outcome") or "?"
        chosen = r.get("chosen") or {}
        pool = ", ".join(
            f"{c['name']} {_fmt(c.get('score'))}" for c in r.get("pool") or [] if "name" in c
        )
        rows.append(
            [
                _td(r["job"]),
                _td(r["index"], "num"),
                _td(", ".join(r.get("triggers") or [])),
                _td(_fmt(r.get("rows")), "num"),
                _td(chosen.get("name") or ""),
                _td(pool),
                _td(_fmt((scores.get("candidate") or {}).get(metric)), "num"),
                _td(_fmt((scores.get("champion") or {}).get(metric)), "num"),
                _td(outcome, outcome),
                _td(f"v{r['version']}" if r.get("version") else ""),
                _td(why),
            ]
        )
    return _table(
        [
            "job",
            "at record",
            "trigger",
            "rows",
            "chosen",
            f"pool ({metric} on the holdout)",
            f"candidate {metric}",
            f"champion {metric}",
            "verdict",
            "version",
            "reason",
        ],
        rows,
        "No retrain ran.",
        numeric=(1, 3, 6, 7),
    )


def _alarms(result: dict[str, Any]) -> str:
    rows = [
        [
            _td(a["index"], "num"),
            _td(a.get("line", ""), "num"),
            _td(_fmt(a.get("time"), 1), "num"),
            _td(a["kind"]),
            _td(", ".join(a.get("features") or []) or a["signal"]),
            _td(a["change_point"], "num"),
        ]
        for a in result["alarms"]
    ]
    return _table(
        ["record", "file line", "time", "kind", "signal / features", "change point"],
        rows,
        "No drift alarm.",
        numeric=(0, 1, 2, 5),
    )


def _img(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


# -- figures ---------------------------------------------------------------------------------
def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _score_figure(result: dict[str, Any]) -> bytes:
    from matplotlib.figure import Figure

    series = result["series"]
    score = result["score"]
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    ax = fig.add_subplot()
    x = series["index"]
    ax.plot(x, _nan(series["prequential"]), color="#1f5fbf", lw=1.6, label="prequential (rolling)")
    ax.plot(x, _nan(series["live_score"]), color="#8a93a6", lw=1.0, label="monitor live score")
    if any(v is not None for v in series.get("estimated", ())):
        ax.plot(
            x,
            _nan(series["estimated"]),
            color="#e69f00",
            lw=1.0,
            ls="--",
            label="estimated from probabilities (before labels)",
        )
    for i, seg in enumerate(score["segments"]):
        if i % 2:
            ax.axvspan(seg["first_index"], seg["last_index"], color="#eef1f7", lw=0, zorder=0)
    drift = result.get("drift") or {}
    for n, p in enumerate(drift.get("points", [])):
        ax.axvline(p, color="black", ls=":", lw=1.2, label="true drift point" if n == 0 else None)
    for n, a in enumerate(result["alarms"]):
        ax.axvline(
            a["index"], color="#d62728", ls="--", lw=1.2, label="drift alarm" if n == 0 else None
        )
    for n, d in enumerate(result["deploys"]):
        ax.axvline(
            d["index"], color="#2ca02c", lw=1.4, alpha=0.8, label="deploy" if n == 0 else None
        )
    rejected = [r["index"] for r in result["retrains"] if r.get("outcome") != "deployed"]
    retrained = [r["index"] for r in result["retrains"]]
    lo, hi = _limits(series["prequential"], series["live_score"], score["metric"])
    ax.set_ylim(lo, hi)
    if retrained:
        ax.plot(
            retrained,
            [lo + 0.04 * (hi - lo)] * len(retrained),
            "^",
            color="#2ca02c",
            ms=7,
            label="retrain",
        )
    if rejected:
        ax.plot(
            rejected,
            [lo + 0.04 * (hi - lo)] * len(rejected),
            "X",
            color="#ff7f0e",
            ms=9,
            label="rejected / not deployed",
        )
    for n, r in enumerate(result["rollbacks"]):
        ax.axvline(r["index"], color="#9467bd", lw=2, label="rollback" if n == 0 else None)
    ax.set_xlabel("record")
    ax.set_ylabel(score["metric"])
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, ncols=4, framealpha=0.9)
    return _png(fig)


def _detector_figure(result: dict[str, Any]) -> bytes:
    from matplotlib.figure import Figure

    series = result["series"]
    detectors: dict[str, list[float | None]] = series["detectors"]
    names = list(detectors)
    cols = 3
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(12, 2.2 * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    hits: dict[str, list[int]] = {}
    for d in result["detections"]:
        key = f"{d['signal']}:{d['feature']}" if d["feature"] else d["signal"]
        hits.setdefault(key, []).append(d["index"])
    x = series["index"]
    for n, ax in enumerate(axes.flat):
        if n >= len(names):
            ax.set_visible(False)
            continue
        name = names[n]
        ax.plot(x, _nan(detectors[name]), color="#1f5fbf", lw=1.0)
        for d in result["deploys"]:
            ax.axvline(d["index"], color="#2ca02c", lw=0.8, alpha=0.6)
        for i in hits.get(name, []):
            ax.axvline(i, color="#d62728", lw=1.0, ls="--")
        ax.set_title(f"{name}  ({len(hits.get(name, []))} detections)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("record", fontsize=8)
    return _png(fig)


def _nan(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def _limits(*columns: Any) -> tuple[float, float]:
    *series, metric = columns
    values = [v for col in series for v in col if v is not None and math.isfinite(v)]
    if metric == "accuracy":
        low = min(values, default=0.0)
        return max(0.0, min(low, 0.9) - 0.05), 1.02
    if not values:
        return 0.0, 1.0
    top = max(values)
    return 0.0, top * 1.1 if top > 0 else 1.0
