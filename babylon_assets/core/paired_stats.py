"""Does a checkpoint trade better than its base? The numbers of a paired held-out evaluation: per-policy
metrics, the paired P&L difference with a bootstrap interval, the promotion gate, and a plot of both P&L
distributions. No Dagster here.

Both policies play the same evaluation markets (same seeds, same hours, same agent slots), so each of the
base's agent-windows has a twin played by the checkpoint on the identical market path; the difference of a
pair removes the market's luck, which dwarfs any policy effect in a single window.
"""

from __future__ import annotations

import html
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class PlayResult:
    """One agent-window of evaluation play by one policy."""

    policy: str  # the model version that played ("base:<BASE_MODEL>" or "{MODEL_NAME}@{step}")
    seed: int
    window_id: str
    slot: str  # the agent's seat at the table (index and archetype), the same for both policies
    final_pnl: float
    decisions: int
    unparseable: int
    max_drawdown: float
    judge_score: float | None = None
    trajectory_id: str | None = None

    @property
    def pair_key(self) -> tuple[int, str, str]:
        """What a base play and a checkpoint play must share to be a pair."""
        return (self.seed, self.window_id, self.slot)


def max_drawdown(pnl_path: Sequence[float]) -> float:
    """The largest fall of P&L from a running peak (starting at 0), as a positive number."""
    peak, worst = 0.0, 0.0
    for pnl in pnl_path:
        peak = max(peak, pnl)
        worst = max(worst, peak - pnl)
    return worst


@dataclass(frozen=True, slots=True)
class PolicyMetrics:
    """How one policy played the evaluation markets."""

    agent_windows: int
    mean_pnl: float
    win_rate: float  # share of agent-windows that ended with a positive P&L
    mean_max_drawdown: float
    worst_drawdown: float
    decisions: int
    unparseable_rate: float  # share of decisions whose response did not parse
    mean_judge_score: float | None

    @classmethod
    def of(cls, plays: Sequence[PlayResult]) -> PolicyMetrics:
        """The metrics of these plays (all zero when there are none)."""
        n = len(plays)
        decisions = sum(p.decisions for p in plays)
        judged = [p.judge_score for p in plays if p.judge_score is not None]
        return cls(
            agent_windows=n,
            mean_pnl=sum(p.final_pnl for p in plays) / n if n else 0.0,
            win_rate=sum(1 for p in plays if p.final_pnl > 0) / n if n else 0.0,
            mean_max_drawdown=sum(p.max_drawdown for p in plays) / n if n else 0.0,
            worst_drawdown=max((p.max_drawdown for p in plays), default=0.0),
            decisions=decisions,
            unparseable_rate=sum(p.unparseable for p in plays) / decisions if decisions else 0.0,
            mean_judge_score=sum(judged) / len(judged) if judged else None,
        )


@dataclass(frozen=True, slots=True)
class PairedDifference:
    """Mean of (checkpoint - base) P&L over paired agent-windows, with a percentile bootstrap interval."""

    pairs: int
    mean: float
    low: float
    high: float
    confidence: float
    resamples: int
    unpaired: int = 0  # plays of either policy without a twin (left out, counted)
    markets: int = 0  # the clusters resampled: markets (seed, hour), whose seats share one market


def pair_plays(
    base: Sequence[PlayResult], candidate: Sequence[PlayResult]
) -> tuple[list[tuple[PlayResult, PlayResult]], int]:
    """Base and checkpoint plays matched by (seed, window, slot), in a stable order, and how many had no twin."""
    by_key = {p.pair_key: p for p in base}
    pairs = [(by_key[c.pair_key], c) for c in candidate if c.pair_key in by_key]
    pairs.sort(key=lambda pair: pair[0].pair_key)
    unpaired = len(base) + len(candidate) - 2 * len(pairs)
    return pairs, unpaired


def paired_bootstrap(
    differences: Sequence[float],
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    unpaired: int = 0,
    clusters: Sequence[Any] | None = None,
) -> PairedDifference:
    """The mean difference and its percentile bootstrap interval.

    With `clusters` (one key per difference: its market, (seed, hour)) whole clusters are resampled with replacement,
    since the seats of one market share its prices and news and are not independent; without, single pairs are.
    Seeded, so the same evaluation always reports the same interval. With fewer than 2 clusters (or pairs) the
    interval is the whole line: nothing can be concluded, and a gate on its lower bound fails.
    """
    n = len(differences)
    groups: dict[Any, list[float]] = {}
    for index, value in enumerate(differences):
        groups.setdefault(index if clusters is None else clusters[index], []).append(value)
    markets = len(groups) if clusters is not None else 0
    if n == 0:
        return PairedDifference(0, 0.0, float("-inf"), float("inf"), confidence, resamples, unpaired, markets)
    mean = sum(differences) / n
    if len(groups) == 1:
        return PairedDifference(n, mean, float("-inf"), float("inf"), confidence, resamples, unpaired, markets)
    rng = random.Random(seed)
    sums = [(sum(values), len(values)) for _, values in sorted(groups.items(), key=lambda item: str(item[0]))]
    means = []
    for _ in range(resamples):
        drawn = rng.choices(sums, k=len(sums))
        means.append(sum(total for total, _ in drawn) / sum(count for _, count in drawn))
    means.sort()
    tail = (1.0 - confidence) / 2
    low = means[max(0, int(tail * resamples))]
    high = means[min(resamples - 1, int((1.0 - tail) * resamples) - 1)]
    return PairedDifference(n, mean, low, high, confidence, resamples, unpaired, markets)


@dataclass(frozen=True, slots=True)
class GateVerdict:
    """Whether a checkpoint may be promoted, and why (each failed rule is one reason)."""

    passed: bool
    reasons: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for a person."""
        return "passed: " + "; ".join(self.reasons) if self.passed else "failed: " + "; ".join(self.reasons)


def gate_verdict(
    paired: PairedDifference,
    base: PolicyMetrics,
    candidate: PolicyMetrics,
    *,
    min_pnl_delta: float = 0.0,
    max_unparseable_rise: float = 0.0,
) -> GateVerdict:
    """The promotion gate: the interval's lower bound above `min_pnl_delta`, and no rise of the unparseable
    rate beyond `max_unparseable_rise` (absolute, 0.0 = none at all)."""
    reasons: list[str] = []
    passed = True
    interval = f"[{paired.low:+.2f}, {paired.high:+.2f}]"
    if paired.pairs < 2:
        passed = False
        reasons.append(f"only {paired.pairs} paired agent-window(s): no interval")
    elif paired.low > min_pnl_delta:
        reasons.append(
            f"paired P&L difference {paired.mean:+.2f}, {paired.confidence:.0%} interval {interval}: "
            f"lower bound above {min_pnl_delta:+.2f}"
        )
    else:
        passed = False
        reasons.append(
            f"paired P&L difference {paired.mean:+.2f}, {paired.confidence:.0%} interval {interval}: "
            f"lower bound not above {min_pnl_delta:+.2f}"
        )
    rise = candidate.unparseable_rate - base.unparseable_rate
    if rise > max_unparseable_rise + 1e-12:
        passed = False
        reasons.append(
            f"unparseable responses rose from {base.unparseable_rate:.1%} to "
            f"{candidate.unparseable_rate:.1%} (allowed rise {max_unparseable_rise:.1%})"
        )
    else:
        reasons.append(f"unparseable responses {base.unparseable_rate:.1%} -> {candidate.unparseable_rate:.1%}")
    return GateVerdict(passed, reasons)


@dataclass(frozen=True, slots=True)
class EvaluationReport:
    """Everything an evaluation concludes: stored as trained_models.evalMetrics."""

    base_policy: str
    candidate_policy: str
    base: PolicyMetrics
    candidate: PolicyMetrics
    paired: PairedDifference
    verdict: GateVerdict
    plan: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """Plain JSON (infinite bounds become null)."""
        paired = {
            k: (None if isinstance(v, float) and abs(v) == float("inf") else v) for k, v in asdict(self.paired).items()
        }
        return {
            "base_policy": self.base_policy,
            "candidate_policy": self.candidate_policy,
            "base": asdict(self.base),
            "candidate": asdict(self.candidate),
            "paired_pnl_difference": paired,
            "gate": {"passed": self.verdict.passed, "reasons": self.verdict.reasons},
            "plan": self.plan,
        }


def evaluate(
    base_plays: Sequence[PlayResult],
    candidate_plays: Sequence[PlayResult],
    *,
    plan: dict[str, Any],
    min_pnl_delta: float = 0.0,
    max_unparseable_rise: float = 0.0,
    resamples: int = 10_000,
    seed: int = 0,
) -> EvaluationReport:
    """Metrics of both policies, their paired difference and the gate's verdict."""
    pairs, unpaired = pair_plays(base_plays, candidate_plays)
    paired = paired_bootstrap(
        [c.final_pnl - b.final_pnl for b, c in pairs],
        resamples=resamples,
        seed=seed,
        unpaired=unpaired,
        clusters=[(b.seed, b.window_id) for b, _ in pairs],
    )
    base, candidate = PolicyMetrics.of(base_plays), PolicyMetrics.of(candidate_plays)
    verdict = gate_verdict(
        paired, base, candidate, min_pnl_delta=min_pnl_delta, max_unparseable_rise=max_unparseable_rise
    )
    return EvaluationReport(
        base_plays[0].policy if base_plays else "base",
        candidate_plays[0].policy if candidate_plays else "candidate",
        base,
        candidate,
        paired,
        verdict,
        plan,
    )


def pnl_distributions_svg(
    base: Sequence[float],
    candidate: Sequence[float],
    *,
    labels: tuple[str, str] = ("base", "checkpoint"),
    width: int = 640,
    bins: int = 20,
) -> str:
    """Both P&L distributions as overlaid histograms, one self-contained SVG (no plotting library)."""
    values = [*base, *candidate]
    height, pad = 240, 36
    if not values:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="40"><text x="8" y="24">'
            "no evaluation play</text></svg>"
        )
    low, high = min(values), max(values)
    span = (high - low) or 1.0

    def counts(series: Sequence[float]) -> list[int]:
        found = [0] * bins
        for v in series:
            found[min(bins - 1, int((v - low) / span * bins))] += 1
        return found

    series = [(labels[0], counts(base), "#4c78a8"), (labels[1], counts(candidate), "#f58518")]
    tallest = max(max(c) for _, c, _ in series) or 1
    bar = (width - 2 * pad) / bins
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#333"/>',
    ]
    for index, (_, found, colour) in enumerate(series):
        for b, count in enumerate(found):
            if count:
                h = (height - 2 * pad) * count / tallest
                x = pad + b * bar + index * bar / 2
                parts.append(
                    f'<rect x="{x:.1f}" y="{height - pad - h:.1f}" width="{bar / 2:.1f}" '
                    f'height="{h:.1f}" fill="{colour}" fill-opacity="0.8"/>'
                )
    parts.append(f'<text x="{pad}" y="{height - pad + 16}">{low:,.0f}</text>')
    parts.append(f'<text x="{width - pad}" y="{height - pad + 16}" text-anchor="end">{high:,.0f}</text>')
    parts.append(f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle">final P&amp;L per agent-window</text>')
    for index, (label, found, colour) in enumerate(series):
        y = 16 + 14 * index
        parts.append(f'<rect x="{width - pad - 150}" y="{y - 9}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{width - pad - 134}" y="{y}">{html.escape(label)} (n={sum(found)})</text>')
    parts.append("</svg>")
    return "".join(parts)
