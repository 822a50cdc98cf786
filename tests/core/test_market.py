"""The simulated market: deterministic, consistent and independent of who plays."""

import math

import pytest

from babylon_assets.core.market import MarketConfig, generate_window_market

W = "2025-01-15T10:00"


def test_same_seed_and_window_give_the_same_market():
    first = generate_window_market(7, W, duration_minutes=10)
    again = generate_window_market(7, W, duration_minutes=10)
    assert first == again
    assert generate_window_market(8, W, duration_minutes=10).prices != first.prices
    assert generate_window_market(7, "2025-01-15T11:00", duration_minutes=10).prices != first.prices


def test_shape_of_a_window():
    market = generate_window_market(7, W, duration_minutes=10, step_seconds=30)
    assert market.steps == 20
    assert all(len(path) == 21 and min(path) > 0 for path in market.prices.values())
    assert all(len(path) == 21 and all(0 < p < 1 for p in path) for path in market.probabilities.values())
    assert len(market.predictions) == 3 and all(p.outcome in ("YES", "NO") for p in market.predictions)
    with pytest.raises(ValueError, match="1..59"):
        generate_window_market(7, W, duration_minutes=60)


def test_ticker_questions_resolve_by_the_price_path_and_settle_at_the_outcome():
    for seed in range(20):
        market = generate_window_market(seed, W, duration_minutes=10)
        for prediction in market.predictions:
            final = market.probabilities[prediction.market_id][-1]
            assert (final > 0.5) == (prediction.outcome == "YES")
            if prediction.ticker is not None:
                above = market.prices[prediction.ticker][-1] > prediction.threshold
                assert above == (prediction.outcome == "YES")


def test_shocks_move_prices_and_make_news_at_the_step_they_happen():
    config = MarketConfig(shock_probability=1.0, rumour_probability=0.0)
    market = generate_window_market(3, W, duration_minutes=10, config=config)
    shocks = [e for e in market.news if e.kind in ("crash", "rally")]
    assert len(shocks) == len(market.companies)
    for event in shocks:
        path = market.prices[event.ticker]
        jump = math.log(path[event.step] / path[event.step - 1])
        assert (jump < -0.05) if event.kind == "crash" else (jump > 0.05)
        assert event.ticker in event.headline
        assert 1 <= event.step < market.steps  # seen at a decision, never only at the close
