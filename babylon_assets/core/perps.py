"""Account arithmetic of the simulated market: perpetual futures (leverage, liquidation, funding,
mark-to-market) and yes/no prediction shares. No Dagster here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Side = Literal["long", "short"]
PredictionSide = Literal["YES", "NO"]

MAINTENANCE_MARGIN = 0.05  # of notional at entry
MAX_LEVERAGE = 10.0
MIN_PRICE = 0.01


class TradeError(ValueError):
    """A trade the account cannot make; the agent's action fails with this message."""


@dataclass(slots=True)
class PerpPosition:
    """An open perpetual-futures position; margin is the agent's own money at stake."""

    ticker: str
    side: Side
    quantity: float
    entry_price: float
    leverage: float
    margin: float

    @property
    def direction(self) -> int:
        """+1 for long, -1 for short."""
        return 1 if self.side == "long" else -1

    def unrealized_pnl(self, mark: float) -> float:
        """Mark-to-market profit or loss."""
        return self.direction * self.quantity * (mark - self.entry_price)

    @property
    def liquidation_price(self) -> float:
        """The mark at which the remaining margin falls to the maintenance margin."""
        return self.entry_price * (1 - self.direction * (1 / self.leverage - MAINTENANCE_MARGIN))

    def is_liquidated(self, mark: float) -> bool:
        """True when the mark has reached the liquidation price."""
        return mark <= self.liquidation_price if self.side == "long" else mark >= self.liquidation_price


@dataclass(slots=True)
class PredictionPosition:
    """Shares of one side of a yes/no market; each winning share pays $1."""

    market_id: str
    side: PredictionSide
    shares: float
    cost: float


@dataclass(slots=True)
class Account:
    """An agent's money in one window: cash, positions, and what it realized."""

    starting_balance: float
    cash: float = field(init=False)
    perps: dict[str, PerpPosition] = field(default_factory=dict)
    predictions: dict[tuple[str, PredictionSide], PredictionPosition] = field(default_factory=dict)
    realized_pnl: float = 0.0
    funding_paid: float = 0.0
    liquidations: int = 0
    trades: int = 0

    def __post_init__(self) -> None:
        self.cash = self.starting_balance

    # -- perps ----------------------------------------------------------------------------------

    def open_perp(self, ticker: str, side: Side, margin: float, leverage: float, price: float) -> PerpPosition:
        """Open a position putting `margin` of cash at stake at `leverage` (notional = margin x leverage)."""
        if ticker in self.perps:
            raise TradeError(f"already holding {self.perps[ticker].side} {ticker}; CLOSE it first")
        if not 1 <= leverage <= MAX_LEVERAGE:
            raise TradeError(f"leverage {leverage:g} is outside 1..{MAX_LEVERAGE:g}")
        if margin <= 0:
            raise TradeError("amount must be positive")
        if margin > self.cash + 1e-9:
            raise TradeError(f"amount ${margin:,.2f} exceeds available cash ${self.cash:,.2f}")
        if price < MIN_PRICE:
            raise TradeError(f"{ticker} is not trading")
        position = PerpPosition(ticker, side, margin * leverage / price, price, leverage, margin)
        self.cash -= margin
        self.perps[ticker] = position
        self.trades += 1
        return position

    def close_perp(self, ticker: str, price: float) -> float:
        """Close at `price`; returns the realized P&L (a loss never exceeds the margin)."""
        position = self.perps.pop(ticker, None)
        if position is None:
            raise TradeError(f"no open position in {ticker}")
        pnl = max(position.unrealized_pnl(price), -position.margin)
        self.cash += position.margin + pnl
        self.realized_pnl += pnl
        self.trades += 1
        return pnl

    def apply_funding(self, marks: dict[str, float], rates_per_hour: dict[str, float], hours: float) -> float:
        """Pay or receive funding on open positions; returns the net amount paid by this account."""
        paid = 0.0
        for ticker, position in self.perps.items():
            payment = position.direction * position.quantity * marks[ticker] * rates_per_hour[ticker] * hours
            # Funding is settled against the position's margin, as exchanges do.
            position.margin -= payment
            paid += payment
        self.funding_paid += paid
        self.realized_pnl -= paid
        return paid

    def liquidate(self, marks: dict[str, float]) -> list[str]:
        """Close every position whose liquidation price was reached; each loses its whole margin."""
        gone = [t for t, p in self.perps.items() if p.is_liquidated(marks[t]) or p.margin <= 0]
        for ticker in gone:
            position = self.perps.pop(ticker)
            self.realized_pnl -= position.margin
            self.liquidations += 1
        return gone

    # -- prediction markets -----------------------------------------------------------------------------

    def buy_prediction(self, market_id: str, side: PredictionSide, amount: float, yes_price: float) -> float:
        """Spend `amount` on shares of `side` at the current price; returns the shares bought."""
        if amount <= 0:
            raise TradeError("amount must be positive")
        if amount > self.cash + 1e-9:
            raise TradeError(f"amount ${amount:,.2f} exceeds available cash ${self.cash:,.2f}")
        price = yes_price if side == "YES" else 1 - yes_price
        if not 0 < price < 1:
            raise TradeError(f"market {market_id} is closed")
        shares = amount / price
        key = (market_id, side)
        held = self.predictions.get(key)
        if held is None:
            self.predictions[key] = PredictionPosition(market_id, side, shares, amount)
        else:
            held.shares += shares
            held.cost += amount
        self.cash -= amount
        self.trades += 1
        return shares

    def resolve_predictions(self, outcomes: dict[str, PredictionSide]) -> float:
        """Pay $1 per winning share, close every prediction position; returns the P&L."""
        pnl = 0.0
        for (market_id, side), position in list(self.predictions.items()):
            payout = position.shares if outcomes[market_id] == side else 0.0
            self.cash += payout
            pnl += payout - position.cost
            del self.predictions[(market_id, side)]
        self.realized_pnl += pnl
        return pnl

    # -- valuation ------------------------------------------------------------------------------------

    def equity(self, marks: dict[str, float], yes_prices: dict[str, float]) -> float:
        """Cash plus positions at their marks (prediction shares at their current price)."""
        perp_value = sum(p.margin + max(p.unrealized_pnl(marks[t]), -p.margin) for t, p in self.perps.items())
        prediction_value = sum(
            p.shares * (yes_prices[m] if side == "YES" else 1 - yes_prices[m])
            for (m, side), p in self.predictions.items()
        )
        return self.cash + perp_value + prediction_value

    def settle(self, marks: dict[str, float], outcomes: dict[str, PredictionSide]) -> float:
        """End of window: close every perp at its mark and resolve every prediction; returns the P&L."""
        for ticker in list(self.perps):
            self.close_perp(ticker, marks[ticker])
            self.trades -= 1  # settlement is not a trade of the agent's
        self.resolve_predictions(outcomes)
        return self.cash - self.starting_balance
