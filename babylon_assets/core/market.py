"""The simulated market of one window: fictional companies' perpetual futures and yes/no prediction
markets, with drift, noise, news shocks and news lines. No Dagster here.

A window's market is a pure function of (seed, window id, duration, step length): agents are
price-takers, so the same seed gives the same market path whoever plays.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["YES", "NO"]


@dataclass(frozen=True, slots=True)
class Company:
    """A fictional listed company whose perpetual future trades in Babylon."""

    ticker: str
    name: str
    base_price: float
    volatility: float  # standard deviation of the log return per simulated minute
    drift: float  # mean log return per simulated minute


COMPANIES: tuple[Company, ...] = (
    Company("NVDX", "Nvidex Semiconductors", 120.0, 0.0040, 0.00005),
    Company("TSLR", "Teslar Motors", 240.0, 0.0060, 0.0),
    Company("BNNA", "Banana Republic Foods", 35.0, 0.0025, 0.00002),
    Company("QNTM", "Quantum Dynamics", 80.0, 0.0050, -0.00003),
    Company("MEME", "Memetic Media", 12.0, 0.0090, 0.0),
)

_CRASH_HEADLINES = (
    "{name} ({ticker}) plunges {pct:.0f}% after regulators open an accounting probe",
    "{name} ({ticker}) sinks {pct:.0f}% as its CEO resigns without notice",
    "{name} ({ticker}) tumbles {pct:.0f}% on a surprise profit warning",
)
_RALLY_HEADLINES = (
    "{name} ({ticker}) soars {pct:.0f}% on record quarterly orders",
    "{name} ({ticker}) jumps {pct:.0f}% after a takeover bid",
    "{name} ({ticker}) rallies {pct:.0f}% as a key patent is upheld",
)
_CRASH_RUMOURS = ("Traders whisper about trouble in {name}'s books", "Short sellers circle {name} ({ticker})")
_RALLY_RUMOURS = ("Chatter of a big contract for {name} ({ticker})", "Insiders at {name} seen buying shares")
# (question, the news line when the answer will be YES, the news line when it will be NO)
_MACRO_QUESTIONS = (
    (
        "Will the Babylon Central Bank cut rates this hour?",
        "Central bank insiders say a rate cut is coming",
        "Central bank insiders rule out a rate cut",
    ),
    (
        "Will the Babylon Games attendance record fall this hour?",
        "Turnstile counts at the Babylon Games run far above the record",
        "Turnstile counts at the Babylon Games lag well behind the record",
    ),
)


@dataclass(frozen=True, slots=True)
class MarketConfig:
    """Parameters of the simulated market."""

    companies: tuple[Company, ...] = COMPANIES
    shock_probability: float = 0.35  # per company per window
    shock_size: tuple[float, float] = (0.08, 0.20)
    rumour_probability: float = 0.5  # a shock is hinted at one to three steps ahead
    funding_rate_sd: float = 0.0005  # per hour
    ticker_questions: int = 2
    macro_questions: int = 1


@dataclass(frozen=True, slots=True)
class NewsEvent:
    """A news line that appears at a decision step (agents see it from then on)."""

    step: int
    headline: str
    ticker: str | None = None
    market_id: str | None = None
    kind: Literal["crash", "rally", "rumour", "update"] = "update"


@dataclass(frozen=True, slots=True)
class PredictionMarket:
    """A yes/no question whose outcome is fixed when the market is created."""

    market_id: str
    question: str
    outcome: Outcome
    ticker: str | None = None
    threshold: float | None = None


@dataclass(frozen=True, slots=True)
class WindowMarket:
    """Everything agents can observe in one window, step by step, and how it ends."""

    window_id: str
    step_seconds: int
    steps: int
    prices: dict[str, list[float]]  # steps + 1 points: before each decision, and the close
    funding_rates: dict[str, float]  # per hour; positive: longs pay shorts
    probabilities: dict[str, list[float]]  # YES price, steps + 1 points
    predictions: list[PredictionMarket]
    news: list[NewsEvent] = field(default_factory=list)
    companies: tuple[Company, ...] = COMPANIES

    def news_until(self, step: int) -> list[NewsEvent]:
        """News published at or before `step`."""
        return [event for event in self.news if event.step <= step]

    def company(self, ticker: str) -> Company:
        """The company behind `ticker`."""
        return next(c for c in self.companies if c.ticker == ticker)


def stable_seed(*parts: object) -> int:
    """A seed that is the same in every process (Python's hash() is salted per process)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _probability_path(prices: list[float], threshold: float, volatility: float, step_minutes: float) -> list[float]:
    # A fair YES price: the chance that a random walk from here ends above the threshold.
    steps = len(prices) - 1
    path = []
    for index, price in enumerate(prices[:-1]):
        remaining = max(steps - index, 1) * step_minutes
        z = math.log(price / threshold) / (volatility * math.sqrt(remaining))
        path.append(min(0.98, max(0.02, 0.5 * (1 + math.erf(z / math.sqrt(2))))))
    path.append(0.99 if prices[-1] > threshold else 0.01)
    return path


def generate_window_market(
    seed: int,
    window_id: str,
    *,
    duration_minutes: int,
    step_seconds: int = 60,
    config: MarketConfig = MarketConfig(),
) -> WindowMarket:
    """The market of one window, a pure function of its arguments."""
    if not 1 <= duration_minutes <= 59:
        raise ValueError(f"duration must be 1..59 simulated minutes so play stays in its hour, got {duration_minutes}")
    if step_seconds < 1 or step_seconds > duration_minutes * 60:
        raise ValueError(f"step of {step_seconds}s does not fit {duration_minutes} minutes")
    rng = random.Random(stable_seed("market", seed, window_id))
    steps = max(1, duration_minutes * 60 // step_seconds)
    step_minutes = step_seconds / 60
    prices: dict[str, list[float]] = {}
    news: list[NewsEvent] = []
    funding: dict[str, float] = {}
    for company in config.companies:
        price = company.base_price * math.exp(rng.gauss(0, 0.15))
        # Shocks land on a decision step (never only at the close), so their news is seen with the jump.
        shock_step = rng.randint(1, steps - 1) if steps > 1 and rng.random() < config.shock_probability else None
        direction = rng.choice((-1, 1))
        size = rng.uniform(*config.shock_size)
        path = [price]
        for step in range(1, steps + 1):
            log_return = company.drift * step_minutes + company.volatility * math.sqrt(step_minutes) * rng.gauss(0, 1)
            if shock_step is not None and step == shock_step:
                log_return += direction * math.log1p(size)
            elif shock_step is not None and step > shock_step:
                # Shocks keep moving for a while: reacting to the news pays, fighting it costs.
                log_return += direction * size * 0.04 * step_minutes
            price = price * math.exp(log_return)
            path.append(price)
        prices[company.ticker] = path
        funding[company.ticker] = rng.gauss(0.0001, config.funding_rate_sd)
        if shock_step is not None:
            templates = _CRASH_HEADLINES if direction < 0 else _RALLY_HEADLINES
            news.append(
                NewsEvent(
                    step=shock_step,
                    headline=rng.choice(templates).format(name=company.name, ticker=company.ticker, pct=size * 100),
                    ticker=company.ticker,
                    kind="crash" if direction < 0 else "rally",
                )
            )
            if rng.random() < config.rumour_probability and shock_step > 1:
                rumours = _CRASH_RUMOURS if direction < 0 else _RALLY_RUMOURS
                news.append(
                    NewsEvent(
                        step=max(0, shock_step - rng.randint(1, 3)),
                        headline=rng.choice(rumours).format(name=company.name, ticker=company.ticker),
                        ticker=company.ticker,
                        kind="rumour",
                    )
                )
    predictions: list[PredictionMarket] = []
    probabilities: dict[str, list[float]] = {}
    for index, company in enumerate(
        rng.sample(list(config.companies), k=min(config.ticker_questions, len(config.companies)))
    ):
        path = prices[company.ticker]
        threshold = round(path[0] * (1 + rng.uniform(-0.01, 0.01)), 2)
        market_id = f"{window_id}-pm{index + 1}"
        predictions.append(
            PredictionMarket(
                market_id=market_id,
                question=f"Will {company.ticker} close the hour above ${threshold:.2f}?",
                outcome="YES" if path[-1] > threshold else "NO",
                ticker=company.ticker,
                threshold=threshold,
            )
        )
        probabilities[market_id] = _probability_path(path, threshold, company.volatility, step_minutes)
    for index in range(config.macro_questions):
        question, yes_line, no_line = _MACRO_QUESTIONS[rng.randrange(len(_MACRO_QUESTIONS))]
        market_id = f"{window_id}-pm{config.ticker_questions + index + 1}"
        outcome: Outcome = "YES" if rng.random() < 0.5 else "NO"
        target = 1.0 if outcome == "YES" else 0.0
        reveal = rng.randint(0, steps)  # from this step on the crowd learns the answer
        probability = rng.uniform(0.3, 0.7)
        path = []
        for step in range(steps):
            pull = 0.35 if step >= reveal else 0.03
            probability = min(0.98, max(0.02, probability + pull * (target - probability) + rng.gauss(0, 0.03)))
            path.append(probability)
        path.append(0.99 if outcome == "YES" else 0.01)
        probabilities[market_id] = path
        predictions.append(PredictionMarket(market_id=market_id, question=question, outcome=outcome))
        if reveal < steps:
            news.append(
                NewsEvent(
                    step=reveal, headline=yes_line if outcome == "YES" else no_line, market_id=market_id, kind="update"
                )
            )
    news.sort(key=lambda event: (event.step, event.headline))
    return WindowMarket(
        window_id=window_id,
        step_seconds=step_seconds,
        steps=steps,
        prices=prices,
        funding_rates=funding,
        probabilities=probabilities,
        predictions=predictions,
        news=news,
        companies=config.companies,
    )
