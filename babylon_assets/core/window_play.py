"""Playing one window of the simulated market with any agents (scripted or LLM). No Dagster, no I/O:
the result is a record of every decision, ready to be written by the recorder.
"""

from __future__ import annotations

import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from babylon_assets.core.agent_protocol import (
    Decision,
    Observation,
    PositionView,
    PredictionView,
    observation_prompt,
    parse_or_hold,
    system_prompt,
)
from babylon_assets.core.market import WindowMarket, stable_seed
from babylon_assets.core.perps import Account, PredictionSide, Side, TradeError

STARTING_BALANCE = 10_000.0


@dataclass(slots=True)
class AgentReply:
    """What an agent answered, with what its endpoint reported (scripted agents report no tokens)."""

    text: str
    model: str
    model_version: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    logprobs: list[tuple[str, float]] | None = None
    latency_ms: float = 0.0
    error: str | None = None  # the endpoint failed; the text is empty
    schema: dict[str, Any] | None = None  # the decision schema the answer was constrained by, if any
    note: str | None = None  # why the call was not what was asked (a refused schema, asked again without it)


class Agent(Protocol):
    """Anything that answers a system prompt and an observation prompt (the observation is for scripts)."""

    agent_id: str
    archetype: str

    def start_window(self, window_id: str) -> None:
        """Called before the agent plays a window (scripted agents reseed here)."""

    def respond(self, system: str, user: str, observation: Observation) -> AgentReply: ...


def seat_name(agent: Agent) -> str:
    """The name the agent is told it has: its id, unless it plays a seat under another (an evaluation's policies play
    the same seat under ids of their own, and are told the same name, so that paired play sees the same prompts)."""
    return str(getattr(agent, "seat_name", None) or agent.agent_id)


@dataclass(slots=True)
class DecisionRecord:
    """One decision: what the agent saw, answered and did, and how it went."""

    step: int
    at: datetime
    system_prompt: str
    user_prompt: str
    reply: AgentReply
    decision: Decision
    parse_error: str | None
    success: bool
    result: dict[str, Any] | None
    error: str | None
    balance: float
    pnl: float
    open_positions: int
    reward: float = 0.0


@dataclass(slots=True)
class AgentWindowPlay:
    """An agent's whole play in one window and how it ended."""

    agent_id: str
    archetype: str
    window_id: str
    start: datetime
    end: datetime
    starting_balance: float
    decisions: list[DecisionRecord] = field(default_factory=list)
    final_balance: float = 0.0
    final_pnl: float = 0.0
    trades: int = 0
    liquidations: int = 0
    funding_paid: float = 0.0


def _yes_prices(market: WindowMarket, step: int) -> dict[str, float]:
    return {market_id: path[step] for market_id, path in market.probabilities.items()}


def _marks(market: WindowMarket, step: int) -> dict[str, float]:
    return {ticker: path[step] for ticker, path in market.prices.items()}


def observe(market: WindowMarket, account: Account, step: int, at: datetime | None = None) -> Observation:
    """The observation at decision `step`: the market so far and the agent's own account."""
    marks = _marks(market, step)
    yes = _yes_prices(market, step)
    equity = account.equity(marks, yes)
    held: dict[tuple[str, str], float] = {key: p.shares for key, p in account.predictions.items()}
    return Observation(
        minute=step * market.step_seconds / 60,
        step=step,
        steps=market.steps,
        prices=marks,
        open_prices=_marks(market, 0),
        previous_prices=_marks(market, max(step - 1, 0)),
        funding_rates=dict(market.funding_rates),
        cash=account.cash,
        equity=equity,
        pnl=equity - account.starting_balance,
        positions=[
            PositionView(
                p.ticker,
                p.side,
                p.quantity,
                p.entry_price,
                p.leverage,
                p.margin,
                p.unrealized_pnl(marks[p.ticker]),
                p.liquidation_price,
            )
            for p in account.perps.values()
        ],
        predictions=[
            PredictionView(
                m.market_id,
                m.question,
                yes[m.market_id],
                held.get((m.market_id, "YES"), 0.0),
                held.get((m.market_id, "NO"), 0.0),
            )
            for m in market.predictions
        ],
        news=[event.headline for event in market.news_until(step)],
        time=at.isoformat() if at is not None else "",
    )


def execute(decision: Decision, account: Account, market: WindowMarket, step: int) -> dict[str, Any] | None:
    """Carry out a decision on the account; raises TradeError when it cannot be done."""
    marks = _marks(market, step)
    if decision.action in ("OPEN_LONG", "OPEN_SHORT", "CLOSE"):
        if decision.ticker not in marks:
            raise TradeError(f"unknown ticker {decision.ticker!r}; trade one of {', '.join(marks)}")
        if decision.action == "CLOSE":
            return {"realizedPnL": round(account.close_perp(decision.ticker, marks[decision.ticker]), 2)}
        side: Side = "long" if decision.action == "OPEN_LONG" else "short"
        position = account.open_perp(decision.ticker, side, decision.amount, decision.leverage, marks[decision.ticker])
        return {
            "quantity": round(position.quantity, 6),
            "entryPrice": round(position.entry_price, 4),
            "liquidationPrice": round(position.liquidation_price, 4),
        }
    if decision.action in ("BUY_YES", "BUY_NO"):
        yes = _yes_prices(market, step)
        if decision.marketId not in yes:
            raise TradeError(f"unknown market {decision.marketId!r}")
        outcome_side: PredictionSide = "YES" if decision.action == "BUY_YES" else "NO"
        shares = account.buy_prediction(decision.marketId, outcome_side, decision.amount, yes[decision.marketId])
        return {"shares": round(shares, 4), "price": round(yes[decision.marketId], 4)}
    return None


def play_window(
    market: WindowMarket,
    agents: list[Agent],
    *,
    window_start: datetime,
    starting_balance: float = STARTING_BALANCE,
    concurrency: int = 1,
) -> list[AgentWindowPlay]:
    """Play every agent through the window's market; agents never move prices (price-takers). With
    `concurrency` > 1 the agents' calls of a step run in that many threads (LLM agents wait on a server)."""
    for agent in agents:
        agent.start_window(market.window_id)
    accounts = {agent.agent_id: Account(starting_balance) for agent in agents}
    plays = {
        agent.agent_id: AgentWindowPlay(
            agent_id=agent.agent_id,
            archetype=agent.archetype,
            window_id=market.window_id,
            start=window_start + timedelta(seconds=index),
            end=window_start + timedelta(seconds=market.steps * market.step_seconds + index),
            starting_balance=starting_balance,
        )
        for index, agent in enumerate(agents)
    }
    shared_system_prompt = system_prompt()
    hours_per_step = market.step_seconds / 3600
    equities: dict[str, list[float]] = {agent.agent_id: [] for agent in agents}
    for step in range(market.steps + 1):
        marks = _marks(market, step)
        for agent in agents:
            account = accounts[agent.agent_id]
            if step > 0:
                account.apply_funding(marks, market.funding_rates, hours_per_step)
                account.liquidate(marks)
            equities[agent.agent_id].append(account.equity(marks, _yes_prices(market, step)))
        if step == market.steps:
            break
        # Every agent sees the market before any of them acts (they are price-takers on their own accounts),
        # so the step's calls are independent: with `concurrency` > 1 they are made at once.
        seen = []
        for index, agent in enumerate(agents):
            decided_at = window_start + timedelta(seconds=step * market.step_seconds + index)
            observation = observe(market, accounts[agent.agent_id], step, decided_at)
            seen.append(
                (agent, decided_at, observation, observation_prompt(observation, seat_name(agent), agent.archetype))
            )
        if concurrency > 1 and len(agents) > 1:
            with ThreadPoolExecutor(max_workers=min(concurrency, len(agents))) as pool:
                replies = list(pool.map(lambda item: item[0].respond(shared_system_prompt, item[3], item[2]), seen))
        else:
            replies = [agent.respond(shared_system_prompt, user, observation) for agent, _, observation, user in seen]
        for (agent, decided_at, observation, user), reply in zip(seen, replies, strict=True):
            account = accounts[agent.agent_id]
            decision, parse_error = parse_or_hold(reply.text)
            if reply.error is not None:
                parse_error = f"llm call failed: {reply.error}"
            try:
                result, error = execute(decision, account, market, step), parse_error
            except TradeError as trade_error:
                result, error = None, str(trade_error)
            plays[agent.agent_id].decisions.append(
                DecisionRecord(
                    step=step,
                    at=decided_at,
                    system_prompt=shared_system_prompt,
                    user_prompt=user,
                    reply=reply,
                    decision=decision,
                    parse_error=parse_error,
                    success=error is None,
                    result=result,
                    error=error,
                    balance=observation.cash,
                    pnl=observation.pnl,
                    open_positions=len(observation.positions),
                )
            )
    outcomes = {m.market_id: m.outcome for m in market.predictions}
    final_marks = _marks(market, market.steps)
    for agent in agents:
        account, play = accounts[agent.agent_id], plays[agent.agent_id]
        play.final_pnl = round(account.settle(final_marks, outcomes), 2)
        play.final_balance = round(account.cash, 2)
        play.trades, play.liquidations = account.trades, account.liquidations
        play.funding_paid = round(account.funding_paid, 4)
        series = equities[agent.agent_id]
        series[-1] = account.cash  # the close includes prediction payouts
        for record in play.decisions:
            # A decision's reward: the change of equity until the next decision, per starting dollar.
            record.reward = round((series[record.step + 1] - series[record.step]) / starting_balance, 6)
    return [plays[agent.agent_id] for agent in agents]


# -- scripted agents ---------------------------------------------------------------------------------

_BEARISH = re.compile(r"plunges|sinks|tumbles|trouble|short sellers", re.I)
_BULLISH = re.compile(r"soars|jumps|rallies|big contract|seen buying", re.I)
_TICKER = re.compile(r"\(([A-Z]{3,5})\)")
_STYLE = {
    # (share of cash per trade, leverage, chance to act, stop loss, take profit) as fractions of margin
    "conservative": (0.05, 1.5, 0.25, 0.15, 0.25),
    "balanced": (0.10, 3.0, 0.45, 0.30, 0.40),
    "aggressive": (0.30, 8.0, 0.80, 0.90, 1.50),
    "momentum": (0.15, 5.0, 0.60, 0.40, 0.60),
    "contrarian": (0.12, 3.0, 0.50, 0.35, 0.40),
}


def news_signals(news: list[str]) -> dict[str, int]:
    """+1/-1 per ticker from the latest headline that names it (what any reader of the news would take)."""
    signals: dict[str, int] = {}
    for line in news:
        match = _TICKER.search(line)
        if match is None:
            continue
        if _BEARISH.search(line):
            signals[match.group(1)] = -1
        elif _BULLISH.search(line):
            signals[match.group(1)] = 1
    return signals


class ScriptedAgent:
    """A rule-based trader of one archetype; answers in the same JSON as an LLM would."""

    def __init__(self, agent_id: str, archetype: str, seed: int) -> None:
        if archetype not in _STYLE:
            raise ValueError(f"unknown archetype {archetype!r}; one of {', '.join(_STYLE)}")
        self.agent_id = agent_id
        self.archetype = archetype
        self.seed = seed
        self._rng = random.Random(stable_seed("agent", seed, agent_id))

    def start_window(self, window_id: str) -> None:
        """Reseed from the window, so a window's play does not depend on which windows came before."""
        self._rng = random.Random(stable_seed("agent", self.seed, self.agent_id, window_id))

    def respond(self, system: str, user: str, observation: Observation) -> AgentReply:
        """Decide by the archetype's rules; the randomness is the agent's own, never the market's."""
        decision = self.decide(observation)
        return AgentReply(text=decision.to_response(), model=f"scripted/{self.archetype}", model_version="rules@1")

    def decide(self, obs: Observation) -> Decision:
        """The archetype's rule for this observation."""
        share, leverage, activity, stop, take = _STYLE[self.archetype]
        rng = self._rng
        for position in obs.positions:
            ratio = position.unrealized_pnl / max(position.margin, 1e-9)
            if ratio <= -stop or ratio >= take:
                return Decision(
                    action="CLOSE",
                    ticker=position.ticker,
                    reasoning=f"{'stop loss' if ratio < 0 else 'take profit'} at {ratio:+.0%} of margin",
                )
        if rng.random() > activity:
            return Decision(action="HOLD", reasoning="waiting for a clearer signal")
        amount = round(obs.cash * share * rng.uniform(0.7, 1.3), 2)
        signals = news_signals(obs.news)
        free = [t for t in obs.prices if obs.position(t) is None]
        if not free or amount < 1:
            return Decision(action="HOLD", reasoning="fully invested")
        if self.archetype in ("momentum", "balanced") and any(t in signals for t in free):
            ticker = next(t for t in free if t in signals)
            action = "OPEN_LONG" if signals[ticker] > 0 else "OPEN_SHORT"
            return Decision(
                action=action,
                ticker=ticker,
                amount=amount,
                leverage=leverage,
                reasoning=f"trading with the news on {ticker}",
            )
        if self.archetype in ("contrarian", "conservative") and obs.predictions and rng.random() < 0.4:
            market = min(obs.predictions, key=lambda m: min(m.yes_price, 1 - m.yes_price))
            favourite_yes = market.yes_price >= 0.5
            if self.archetype == "conservative":
                action = "BUY_YES" if favourite_yes else "BUY_NO"
                reason = "buying the near-certain side"
            else:
                action = "BUY_NO" if favourite_yes else "BUY_YES"
                reason = "the cheap side is mispriced"
            return Decision(action=action, marketId=market.market_id, amount=round(amount / 2, 2), reasoning=reason)
        ticker = max(free, key=lambda t: abs(obs.last_change(t)) + rng.random() * 0.002)
        move = obs.last_change(ticker) or obs.change(ticker)
        if self.archetype == "contrarian":
            action = "OPEN_SHORT" if move > 0 else "OPEN_LONG"
        elif self.archetype == "aggressive":
            action = rng.choice(("OPEN_LONG", "OPEN_SHORT"))
        else:
            action = "OPEN_LONG" if move >= 0 else "OPEN_SHORT"
        return Decision(
            action=action, ticker=ticker, amount=amount, leverage=leverage, reasoning=f"{ticker} moved {move:+.2%}"
        )
