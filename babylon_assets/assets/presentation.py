"""Metadata a person reads in the UI: tables with their schema, and a small inline plot."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema


def _column_type(values: Sequence[object]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float"
    return "string"


def _table_value(value: object) -> str | int | float | bool | None:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def metadata_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> MetadataValue:
    """A table the UI shows with its schema: one typed column per header (numbers stay numbers)."""
    records = [[_table_value(v) for v in row] for row in rows]
    columns = [TableColumn(name, _column_type([record[i] for record in records])) for i, name in enumerate(headers)]
    return MetadataValue.table(
        records=[TableRecord(dict(zip(headers, record, strict=True))) for record in records],
        schema=TableSchema(columns=columns),
    )


def counts_table(counts: Mapping[str, int], label: str = "reason") -> MetadataValue:
    """Counts by reason, largest first."""
    ordered: list[tuple[str, int]] = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return metadata_table([label, "count"], ordered)


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
