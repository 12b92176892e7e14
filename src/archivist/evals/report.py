"""A self-contained HTML report of an eval run: metrics, per-query distribution, metrics over time (inline SVG)."""

from __future__ import annotations

import html
import json
from typing import Any

_W, _H, _PAD = 560, 220, 36


def _histogram_svg(values: list[float], bins: int = 10) -> str:
    """Return an SVG bar chart of values in [0, 1] split into equal bins."""
    counts = [0] * bins
    for v in values:
        counts[min(int(v * bins), bins - 1)] += 1
    top = max(counts) or 1
    bw = (_W - 2 * _PAD) / bins
    bars = []
    for i, n in enumerate(counts):
        h = (_H - 2 * _PAD) * n / top
        x = _PAD + i * bw
        y = _H - _PAD - h
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" fill="#4c78a8">'
            f"<title>{i / bins:.1f}–{(i + 1) / bins:.1f}: {n} queries</title></rect>"
            f'<text x="{x + bw / 2:.1f}" y="{y - 3:.1f}" font-size="10" text-anchor="middle">{n}</text>'
        )
    labels = "".join(
        f'<text x="{_PAD + i * bw:.1f}" y="{_H - _PAD + 14}" font-size="10">{i / bins:.1f}</text>' for i in range(bins)
    )
    return f'<svg width="{_W}" height="{_H}" role="img">{"".join(bars)}{labels}</svg>'


def _line_svg(points: list[tuple[str, float]], label: str) -> str:
    """Return an SVG line chart of (x label, value) points, oldest first."""
    if not points:
        return "<p>No runs.</p>"
    lo = min(v for _, v in points)
    hi = max(v for _, v in points)
    span = (hi - lo) or 1.0
    step = (_W - 2 * _PAD) / max(len(points) - 1, 1)
    coords = [(_PAD + i * step, _H - _PAD - (_H - 2 * _PAD) * (v - lo) / span) for i, (_, v) in enumerate(points)]
    path = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in enumerate(coords))
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#e45756"><title>{html.escape(t)}: {v:.4f}</title></circle>'
        for (x, y), (t, v) in zip(coords, points, strict=True)
    )
    axis = (
        f'<text x="4" y="{_PAD}" font-size="10">{hi:.4f}</text>'
        f'<text x="4" y="{_H - _PAD}" font-size="10">{lo:.4f}</text>'
        f'<text x="{_PAD}" y="{_H - 8}" font-size="10">{html.escape(label)} over {len(points)} runs</text>'
    )
    return (
        f'<svg width="{_W}" height="{_H}" role="img"><path d="{path}" stroke="#e45756" fill="none"/>{dots}{axis}</svg>'
    )


def render_report(run: dict[str, Any], history: list[dict[str, Any]], metric: str) -> str:
    """Return the HTML page of a run, with `history` (same dataset, oldest first) for the trend chart."""
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in sorted(run["metrics"].items()))
    values = [q[metric] for q in run["per_query"].values() if metric in q]
    trend = [(h["created_at"] + " " + h["id"], float(h["metrics"][metric])) for h in history if metric in h["metrics"]]
    worst = sorted(run["per_query"].items(), key=lambda kv: kv[1].get(metric, 0.0))[:15]
    worst_rows = "".join(
        f"<tr><td>{html.escape(q)}</td><td>{html.escape(run.get('queries', {}).get(q, ''))}</td>"
        f"<td>{m.get(metric, 0.0):.3f}</td></tr>"
        for q, m in worst
    )
    title = f"Eval run {run['id']} — {run['dataset']} ({run['split']})"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:.25rem .5rem;text-align:left}}pre{{background:#f6f6f6;padding:.5rem}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(run["created_at"])} · tag {html.escape(str(run.get("tag")))} · {run["n_queries"]} queries ·
fingerprint {html.escape(run["fingerprint_hash"])}</p>
<h2>Metrics</h2><table><tr><th>metric</th><th>mean</th></tr>{rows}</table>
<h2>Per-query {html.escape(metric)}</h2>{_histogram_svg(values)}
<h2>{html.escape(metric)} over time</h2>{_line_svg(trend, metric)}
<h2>Worst queries</h2><table><tr><th>id</th><th>query</th><th>{html.escape(metric)}</th></tr>{worst_rows}</table>
<h2>Configuration</h2><pre>{html.escape(json.dumps(run["fingerprint"], indent=2))}</pre>
<pre>{html.escape(json.dumps(run.get("timings", {}), indent=2))}</pre>
</body></html>
"""
