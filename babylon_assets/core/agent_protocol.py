"""The one prompt format and the one response parser shared by scripted and LLM agents (DESIGN 6).

An agent sees a system prompt (who it is, the rules, the answer format) and, at each decision, an
observation as the user prompt; it answers with one JSON object. No Dagster here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from babylon_assets.core.perps import MAX_LEVERAGE

ActionType = Literal["OPEN_LONG", "OPEN_SHORT", "CLOSE", "BUY_YES", "BUY_NO", "HOLD"]

ARCHETYPES: dict[str, str] = {
    "conservative": "You protect capital first: small positions, leverage of 1-2x, and you cut losses early.",
    "balanced": "You weigh risk and reward: moderate positions, leverage up to 3x, trades with a clear reason.",
    "aggressive": "You chase large gains: big positions and high leverage, accepting large swings.",
    "momentum": "You follow the trend: buy what is rising and short what is falling, and act fast on news.",
    "contrarian": "You fade the crowd: sell strength, buy weakness, and buy mispriced prediction shares.",
}

# The prompt's version: play under another version of the system prompt or the observation is other play (an
# evaluation plan's key includes it). v2 (issue 20): rules first, the agent's identity last (a shared cached prefix).
# v3: the identity moved from the system prompt into the observation, after the market and before the account, so the
# seats of one decision share the rules and the market (the trainer forwards that prefix once per decision), up to the
# first prediction market in which a seat holds shares (its holding is written on the market's line).
PROMPT_VERSION = "prompt-v3"

RESPONSE_FORMAT = (
    'Answer with exactly one JSON object and nothing else: {"action": "OPEN_LONG" | "OPEN_SHORT" | '
    '"CLOSE" | "BUY_YES" | "BUY_NO" | "HOLD", "ticker": "<for perps>", "marketId": "<for predictions>", '
    f'"amount": <dollars of cash to commit>, "leverage": <1-{MAX_LEVERAGE:g}, perps only>, '
    '"reasoning": "<one sentence>"}'
)


class Decision(BaseModel):
    """An agent's decision, as the response JSON states it."""

    model_config = ConfigDict(extra="ignore")

    action: ActionType
    ticker: str | None = None
    marketId: str | None = None
    amount: float = Field(default=0.0, ge=0)
    leverage: float = Field(default=1.0, ge=1, le=MAX_LEVERAGE)
    reasoning: str = ""

    def to_response(self) -> str:
        """The decision as the JSON an agent answers with."""
        return json.dumps(self.model_dump(exclude_none=True))


HOLD = Decision(action="HOLD", reasoning="no decision")


@dataclass(frozen=True, slots=True)
class PositionView:
    """An open perp as the agent sees it."""

    ticker: str
    side: str
    quantity: float
    entry_price: float
    leverage: float
    margin: float
    unrealized_pnl: float
    liquidation_price: float


@dataclass(frozen=True, slots=True)
class PredictionView:
    """A prediction market as the agent sees it (and what the agent holds in it)."""

    market_id: str
    question: str
    yes_price: float
    yes_shares: float = 0.0
    no_shares: float = 0.0


@dataclass(frozen=True, slots=True)
class Observation:
    """What an agent knows at a decision: nothing from the future, nothing of other agents."""

    minute: float
    step: int
    steps: int
    prices: dict[str, float]
    open_prices: dict[str, float]
    previous_prices: dict[str, float]
    funding_rates: dict[str, float]
    cash: float
    equity: float
    pnl: float
    positions: list[PositionView] = field(default_factory=list)
    predictions: list[PredictionView] = field(default_factory=list)
    news: list[str] = field(default_factory=list)
    time: str = ""  # ISO time of the decision (simulated time in the simulator)

    def change(self, ticker: str) -> float:
        """Fractional change since the window opened."""
        return self.prices[ticker] / self.open_prices[ticker] - 1

    def last_change(self, ticker: str) -> float:
        """Fractional change since the previous decision."""
        return self.prices[ticker] / self.previous_prices[ticker] - 1

    def position(self, ticker: str) -> PositionView | None:
        """The open position in `ticker`, if any."""
        return next((p for p in self.positions if p.ticker == ticker), None)


# The rules every agent shares come first and the agent's identity late, so that what the seats of a window share is
# one prefix: the server's prompt cache and the trainer reuse it (prompt-v1 began with the agent's name: nothing after
# it was shared; prompt-v2 ended the system prompt with it: the market after it was not shared).
RULES = (
    "You are a trader in Babylon, a market of fictional companies. Each minute you see prices, news and your "
    "account, and make one decision. Perpetual futures: OPEN_LONG or OPEN_SHORT commits `amount` of cash as margin "
    "at `leverage`; a position is liquidated (its margin lost) when the price moves against it by about 1/leverage; "
    "longs pay shorts funding when the rate is positive. CLOSE takes profit or loss. Prediction markets: BUY_YES or "
    "BUY_NO spends `amount` on shares at the current price; a winning share pays $1 when the hour ends. Everything "
    "is settled at the end of the hour."
)


def agent_identity(agent_name: str, archetype: str) -> str:
    """Who this agent is: with its account, the only part of the prompts that differs between seats."""
    return f"You are {agent_name}. {ARCHETYPES[archetype]}"


def system_prompt() -> str:
    """The system prompt every seat shares: the market's rules and the answer format."""
    return f"{RULES}\n{RESPONSE_FORMAT}"


def market_lines(obs: Observation) -> list[str]:
    """The minute, prices, prediction markets and news: alike for every seat at this decision, but for the shares a seat
    holds, which its prediction-market lines show."""
    lines = [f"Minute {obs.minute:g} of the hour (decision {obs.step + 1} of {obs.steps})."]
    lines.append("Prices (change since open, since last minute, funding per hour):")
    for ticker, price in obs.prices.items():
        lines.append(
            f"  {ticker} ${price:,.2f} ({obs.change(ticker):+.2%}, {obs.last_change(ticker):+.2%}, "
            f"funding {obs.funding_rates[ticker]:+.3%})"
        )
    lines.append("Prediction markets (YES price):")
    for market in obs.predictions:
        held = ""
        if market.yes_shares or market.no_shares:
            held = f" - you hold {market.yes_shares:,.1f} YES / {market.no_shares:,.1f} NO"
        lines.append(f"  [{market.market_id}] {market.question} YES ${market.yes_price:.2f}{held}")
    lines.append("News: " + (" | ".join(obs.news[-5:]) if obs.news else "none"))
    return lines


def account_lines(obs: Observation) -> list[str]:
    """The agent's own account and open positions."""
    lines = [f"Account: cash ${obs.cash:,.2f}, equity ${obs.equity:,.2f}, P&L ${obs.pnl:+,.2f}."]
    if obs.positions:
        lines.append("Open positions:")
        for p in obs.positions:
            lines.append(
                f"  {p.side} {p.ticker} {p.quantity:,.3f} @ ${p.entry_price:,.2f} x{p.leverage:g}, margin "
                f"${p.margin:,.2f}, unrealized ${p.unrealized_pnl:+,.2f}, liquidation ${p.liquidation_price:,.2f}"
            )
    else:
        lines.append("Open positions: none")
    return lines


def observation_prompt(obs: Observation, agent_name: str, archetype: str) -> str:
    """The observation as the user prompt: the market, then who the agent is, then its account."""
    return "\n".join([*market_lines(obs), agent_identity(agent_name, archetype), *account_lines(obs)])


_JSON_OBJECT = re.compile(r"\{.*\}", re.S)


class UnparseableResponse(ValueError):
    """A response that is not a valid decision."""


def parse_decision(text: str) -> Decision:
    """The decision in a response: the first JSON object in it (code fences allowed), validated."""
    match = _JSON_OBJECT.search(text or "")
    if match is None:
        raise UnparseableResponse("no JSON object in the response")
    try:
        return Decision.model_validate_json(match.group(0))
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "response"
        raise UnparseableResponse(f"{where}: {first['msg']}") from None


def parse_or_hold(text: str) -> tuple[Decision, str | None]:
    """The decision, or HOLD and the reason when the response does not parse."""
    try:
        return parse_decision(text), None
    except UnparseableResponse as error:
        return HOLD, f"unparseable response: {error}"
