"""`babylon report`: one self-contained HTML page with the training history. Per checkpoint: its status,
base vs checkpoint mean P&L and the paired difference with its interval, judge scores, unparseable
rates, the gate's reasons, and the windows that trained it; above them a chart of every checkpoint's
paired interval. No Dagster here; no network (inline SVG, no scripts)."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from babylon_assets.core.on_policy import split_version
from babylon_assets.db.store import Store
from babylon_assets.db.training_records import TrainingRecords


@dataclass(frozen=True)
class CheckpointLine:
    """One checkpoint in the history."""

    version: str
    step: int
    status: str
    created: str
    avg_reward: float | None
    metrics: dict[str, Any] | None
    windows: list[str]
    trajectories: int

    @property
    def paired(self) -> dict[str, Any] | None:
        """The paired P&L difference, when evaluated."""
        return None if not self.metrics else self.metrics.get("paired_pnl_difference")


def history(store: Store, model_name: str) -> list[CheckpointLine]:
    """Every checkpoint of a model, oldest step first, with its evaluation and lineage."""
    records = TrainingRecords(store)
    lines = []
    for row in records.checkpoints():
        version = str(row.modelId)
        split = split_version(version)
        if split is None or split[0] != model_name:
            continue
        step = split[1]
        lineage = records.lineage(version)
        metrics = row.evalMetrics
        lines.append(
            CheckpointLine(
                version,
                int(step),
                str(row.status),
                str(row.createdAt or ""),
                row.avgReward,
                metrics if isinstance(metrics, dict) else None,
                lineage.windows,
                len(lineage.trajectory_ids),
            )
        )
    return sorted(lines, key=lambda line: line.step)


def _money(value: float | None) -> str:
    return "—" if value is None else f"{value:+,.2f}"


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def intervals_svg(lines: Sequence[CheckpointLine], width: int = 720) -> str:
    """Each evaluated checkpoint's paired P&L difference and 95% interval against zero."""
    points = [
        (line.version, p["mean"], p["low"], p["high"])
        for line in lines
        if (p := line.paired) and p.get("low") is not None and p.get("high") is not None
    ]
    if not points:
        return "<p>No checkpoint has been evaluated yet.</p>"
    row, pad_left, pad = 26, 170, 20
    height = pad * 2 + row * len(points)
    low = min(0.0, *(p[2] for p in points))
    high = max(0.0, *(p[3] for p in points))
    span = (high - low) or 1.0

    def x(value: float) -> float:
        return pad_left + (value - low) / span * (width - pad_left - pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20}" '
        'font-family="sans-serif" font-size="12">',
        f'<line x1="{x(0):.1f}" y1="{pad / 2}" x2="{x(0):.1f}" y2="{height - pad / 2}" stroke="#999" '
        'stroke-dasharray="4 3"/>',
    ]
    for index, (version, mean, lo, hi) in enumerate(points):
        y = pad + row * index + row / 2
        colour = "#2a9d4b" if lo > 0 else "#c0392b" if hi < 0 else "#555"
        parts.append(f'<text x="{pad_left - 8}" y="{y + 4}" text-anchor="end">{html.escape(version)}</text>')
        parts.append(f'<line x1="{x(lo):.1f}" y1="{y}" x2="{x(hi):.1f}" y2="{y}" stroke="{colour}" stroke-width="3"/>')
        parts.append(f'<circle cx="{x(mean):.1f}" cy="{y}" r="4" fill="{colour}"/>')
    parts.append(f'<text x="{x(low):.1f}" y="{height + 12}">{low:+,.0f}</text>')
    parts.append(f'<text x="{x(high):.1f}" y="{height + 12}" text-anchor="end">{high:+,.0f}</text>')
    parts.append(f'<text x="{x(0):.1f}" y="{height + 12}" text-anchor="middle">0</text>')
    parts.append("</svg>")
    return "".join(parts)


def render(lines: Sequence[CheckpointLine], model_name: str, generated: datetime) -> str:
    """The page."""
    rows = []
    for line in lines:
        m = line.metrics or {}
        base, cand, paired = m.get("base") or {}, m.get("candidate") or {}, line.paired or {}
        interval = "—"
        if paired:
            lo = "−∞" if paired.get("low") is None else f"{paired['low']:+,.2f}"
            hi = "+∞" if paired.get("high") is None else f"{paired['high']:+,.2f}"
            interval = f"{paired['mean']:+,.2f} [{lo}, {hi}] (n={paired['pairs']})"
        reasons = "; ".join((m.get("gate") or {}).get("reasons", [])) or "not evaluated"
        windows = ", ".join(line.windows[:8]) + (f" … ({len(line.windows)} in all)" if len(line.windows) > 8 else "")
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(cell))}</td>"
                for cell in (
                    line.version,
                    line.status,
                    line.created[:19],
                    _score(line.avg_reward),
                    _money(base.get("mean_pnl")),
                    _money(cand.get("mean_pnl")),
                    interval,
                    f"{_score(base.get('mean_judge_score'))} / {_score(cand.get('mean_judge_score'))}",
                    f"{_share(base.get('unparseable_rate'))} / {_share(cand.get('unparseable_rate'))}",
                    reasons,
                    f"{windows or '—'} ({line.trajectories} trajectories)",
                )
            )
            + "</tr>"
        )
    table = (
        "<table><thead><tr>"
        + "".join(
            f"<th>{h}</th>"
            for h in (
                "checkpoint",
                "status",
                "created (UTC)",
                "training reward",
                "base mean P&amp;L",
                "checkpoint mean P&amp;L",
                "paired difference [95% interval]",
                "judge score base / checkpoint",
                "unparseable base / checkpoint",
                "gate",
                "windows that trained it",
            )
        )
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Training history of {html.escape(model_name)}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:4px 6px;vertical-align:top}}th{{background:#f3f3f3}}</style></head>
<body><h1>Training history of {html.escape(model_name)}</h1>
<p>{len(lines)} checkpoint(s); generated {generated:%Y-%m-%d %H:%M} UTC. The paired difference is checkpoint minus
base P&amp;L per held-out agent-window on identical markets, with a bootstrap 95% interval; green: the whole
interval above zero, red: below.</p>
{intervals_svg(lines)}
{table}
</body></html>
"""


def write_report(store: Store, output: Path, *, model_name: str) -> tuple[Path, int]:
    """Write the page (atomically); returns its path and how many checkpoints it shows."""
    lines = history(store, model_name)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".partial")
    partial.write_text(render(lines, model_name, datetime.now(UTC)), encoding="utf-8")
    os.replace(partial, output)
    return output, len(lines)
