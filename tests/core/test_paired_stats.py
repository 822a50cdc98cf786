"""The numbers of a paired evaluation: drawdown, metrics, the bootstrap interval and the promotion gate."""

import math
import random

import pytest

from babylon_assets.core.paired_stats import (
    PlayResult,
    PolicyMetrics,
    evaluate,
    gate_verdict,
    max_drawdown,
    pair_plays,
    paired_bootstrap,
    pnl_distributions_svg,
)


def play(
    policy: str,
    window: str,
    slot: str,
    pnl: float,
    *,
    unparseable: int = 0,
    decisions: int = 10,
    judge: float | None = None,
) -> PlayResult:
    return PlayResult(policy, 11, window, slot, pnl, decisions, unparseable, max(0.0, -pnl), judge)


def test_drawdown_is_the_largest_fall_from_a_running_peak():
    assert max_drawdown([10, 25, 5, 30, 20]) == 20
    assert max_drawdown([-5, -15, -2]) == 15  # the peak starts at 0
    assert max_drawdown([]) == 0.0


def test_policy_metrics():
    plays = [
        play("p", "w1", "a", 100, unparseable=1, judge=0.5),
        play("p", "w1", "b", -50, judge=1.0),
        play("p", "w2", "a", 0, unparseable=3),
    ]
    metrics = PolicyMetrics.of(plays)
    assert metrics.agent_windows == 3 and metrics.mean_pnl == pytest.approx(50 / 3)
    assert metrics.win_rate == pytest.approx(1 / 3) and metrics.unparseable_rate == pytest.approx(4 / 30)
    assert metrics.mean_judge_score == pytest.approx(0.75) and metrics.worst_drawdown == 50


def test_plays_pair_by_seed_window_and_slot_and_the_rest_is_counted():
    base = [play("base", "w1", "a", 1), play("base", "w1", "b", 2), play("base", "w2", "a", 3)]
    candidate = [play("ckpt", "w2", "a", 5), play("ckpt", "w1", "a", 4), play("ckpt", "w9", "a", 0)]
    pairs, unpaired = pair_plays(base, candidate)
    assert [(b.final_pnl, c.final_pnl) for b, c in pairs] == [(1, 4), (3, 5)]
    assert unpaired == 2


def test_the_bootstrap_interval_on_constructed_cases():
    constant = paired_bootstrap([7.0] * 30, resamples=2000)
    assert (constant.mean, constant.low, constant.high) == (7.0, 7.0, 7.0)
    # 400 differences with mean 5 and standard deviation 10: the normal-theory 95% interval is 5 +- 0.98
    rng = random.Random(3)
    draws = [rng.gauss(5.0, 10.0) for _ in range(400)]
    mean = sum(draws) / len(draws)
    sd = math.sqrt(sum((d - mean) ** 2 for d in draws) / (len(draws) - 1))
    half = 1.96 * sd / math.sqrt(len(draws))
    result = paired_bootstrap(draws, resamples=4000, seed=1)
    assert result.mean == pytest.approx(mean)
    assert result.low == pytest.approx(mean - half, abs=0.15 * half)
    assert result.high == pytest.approx(mean + half, abs=0.15 * half)
    assert paired_bootstrap(draws, resamples=4000, seed=1) == result  # seeded: the same report every time
    lonely = paired_bootstrap([3.0])
    assert lonely.low == float("-inf") and lonely.high == float("inf")


def metrics(unparseable_rate: float) -> PolicyMetrics:
    return PolicyMetrics(100, 0.0, 0.5, 0.0, 0.0, 1000, unparseable_rate, None)


def test_the_gate_passes_only_above_the_threshold_without_more_unparseable_responses():
    better = paired_bootstrap([10.0 + (i % 5) for i in range(50)], resamples=1000)
    assert better.low > 0
    assert gate_verdict(better, metrics(0.1), metrics(0.1)).passed
    noisy = paired_bootstrap([(-1) ** i * 50.0 + 1 for i in range(50)], resamples=1000)
    blocked = gate_verdict(noisy, metrics(0.1), metrics(0.1))
    assert not blocked.passed and "lower bound not above +0.00" in blocked.describe()
    raised = gate_verdict(better, metrics(0.1), metrics(0.2))
    assert not raised.passed and "unparseable responses rose from 10.0% to 20.0%" in raised.describe()
    assert gate_verdict(better, metrics(0.1), metrics(0.15), max_unparseable_rise=0.1).passed
    assert not gate_verdict(better, metrics(0.1), metrics(0.1), min_pnl_delta=20.0).passed
    assert not gate_verdict(paired_bootstrap([5.0]), metrics(0.0), metrics(0.0)).passed


def test_an_evaluation_report_is_plain_json_and_plots_both_distributions():
    # Two markets (the bootstrap resamples markets: one market alone gives no interval).
    windows = ["w1", "w1", "w2", "w2"]
    base = [play("base:x", w, s, p) for w, s, p in zip(windows, "abcd", [1.0, -2.0, 3.0, 0.0], strict=True)]
    candidate = [play("m@2", w, s, p + 10) for w, s, p in zip(windows, "abcd", [1.0, -2.0, 3.0, 0.0], strict=True)]
    report = evaluate(base, candidate, plan={"seeds": [11]}, resamples=500)
    data = report.as_json()
    assert data["paired_pnl_difference"]["mean"] == 10 and data["gate"]["passed"]
    assert data["base_policy"] == "base:x" and data["candidate_policy"] == "m@2"
    svg = pnl_distributions_svg([b.final_pnl for b in base], [c.final_pnl for c in candidate])
    assert svg.startswith("<svg") and svg.count("<rect") >= 4 and "n=4" in svg


def test_the_bootstrap_resamples_markets_whose_seats_move_together() -> None:
    # 10 markets of 8 seats: a market's seats share its prices, so their differences move together.
    differences, markets = [], []
    for market in range(10):
        shift = 40.0 if market % 2 else -30.0
        for seat in range(8):
            differences.append(shift + seat * 0.1)
            markets.append((1000 + market, "2024-09-01T00:00"))
    by_pair = paired_bootstrap(differences, resamples=4000, seed=3)
    by_market = paired_bootstrap(differences, resamples=4000, seed=3, clusters=markets)
    assert by_market.markets == 10 and by_pair.markets == 0
    assert by_market.mean == by_pair.mean
    # Treating 80 correlated seats as independent pairs claims an interval far too narrow.
    assert (by_market.high - by_market.low) > 2 * (by_pair.high - by_pair.low)
    assert paired_bootstrap(differences[:8], clusters=markets[:8]).low == float("-inf")  # one market: no interval


def test_evaluate_resamples_by_market() -> None:
    base = [
        PlayResult("base", seed, "2024-09-01T00:00", f"{slot}", 0.0, 3, 0, 0.0) for seed in (1, 2) for slot in range(4)
    ]
    candidate = [PlayResult("cand", p.seed, p.window_id, p.slot, 5.0 if p.seed == 1 else -1.0, 3, 0, 0.0) for p in base]
    report = evaluate(base, candidate, plan={}, resamples=500)
    assert report.paired.markets == 2 and report.paired.pairs == 8
