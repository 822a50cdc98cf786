"""A window's ground truth (`market_outcomes`) as plain records. No Dagster here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class StockOutcome:
    """How one ticker moved over the window."""

    ticker: str
    start_price: float | None
    end_price: float | None
    change_percent: float | None
    sentiment: str | None
    news: list[Any] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PredictionOutcome:
    """How one yes/no prediction market resolved."""

    market_id: str | None
    question: str | None
    outcome: str | None
    final_probability: float | None
    volume: float | None
    news: list[Any] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WindowOutcomes:
    """Everything recorded about one window's markets."""

    window_id: str
    stocks: list[StockOutcome]
    predictions: list[PredictionOutcome]
    unrecognised_rows: int = 0

    @property
    def recorded(self) -> bool:
        """True when the window has any ground truth at all."""
        return bool(self.stocks or self.predictions)
