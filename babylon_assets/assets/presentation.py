"""Metadata a person reads in the UI: markdown tables and a small inline plot."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence

from dagster import MetadataValue


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> MetadataValue:
    """A markdown table (an em dash when there are no rows)."""
    lines = [f"| {' | '.join(headers)} |", f"|{'---|' * len(headers)}"]
    lines.extend(f"| {' | '.join(_cell(v) for v in row)} |" for row in rows)
    if len(lines) == 2:
        lines.append(f"| {' | '.join(['—'] * len(headers))} |")
    return MetadataValue.md("\n".join(lines))


def counts_table(counts: Mapping[str, int], label: str = "reason") -> MetadataValue:
    """Counts by reason, largest first."""
    ordered: list[tuple[str, int]] = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return markdown_table([label, "count"], ordered)


def scatter_svg(points: Sequence[tuple[float, float]], x_label: str, y_label: str) -> str:
    """A small scatter plot as SVG text (no plotting library needed)."""
    width, height, pad = 320, 200, 34
    xs = [p[0] for p in points] or [0.0]
    ys = [p[1] for p in points] or [0.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(min(ys), 0.0), max(max(ys), 1.0)
    span_x, span_y = (x1 - x0) or 1.0, (y1 - y0) or 1.0

    def sx(x: float) -> float:
        return pad + (x - x0) / span_x * (width - 2 * pad)

    def sy(y: float) -> float:
        return height - pad - (y - y0) / span_y * (height - 2 * pad)

    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="#4f43dd"/>' for x, y in points)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#888"/>'
        f'<text x="{width / 2}" y="{height - 8}" font-size="11" text-anchor="middle">{x_label} '
        f"({x0:,.0f} to {x1:,.0f})</text>"
        f'<text x="10" y="{height / 2}" font-size="11" transform="rotate(-90 10 {height / 2})" '
        f'text-anchor="middle">{y_label}</text>{dots}</svg>'
    )


def inline_image(svg: str, alt: str) -> MetadataValue:
    """An SVG shown inline in the UI's markdown."""
    encoded = base64.b64encode(svg.encode()).decode()
    return MetadataValue.md(f"![{alt}](data:image/svg+xml;base64,{encoded})")
