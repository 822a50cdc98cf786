"""Perpetual futures and prediction-share arithmetic on constructed cases."""

import pytest

from babylon_assets.core.perps import Account, TradeError


def test_a_leveraged_long_gains_leverage_times_the_move():
    account = Account(10_000)
    position = account.open_perp("NVDX", "long", margin=1_000, leverage=5, price=100)
    assert position.quantity == pytest.approx(50)  # $5,000 notional at $100
    assert account.cash == 9_000
    assert position.unrealized_pnl(110) == pytest.approx(500)  # +10% x 5 = +50% of margin
    assert account.equity({"NVDX": 110}, {}) == pytest.approx(10_500)
    assert account.close_perp("NVDX", 110) == pytest.approx(500)
    assert account.cash == pytest.approx(10_500) and account.realized_pnl == pytest.approx(500)


def test_a_short_loses_when_the_price_rises():
    account = Account(10_000)
    account.open_perp("TSLR", "short", margin=2_000, leverage=2, price=200)
    assert account.close_perp("TSLR", 220) == pytest.approx(-400)  # 20 units x $20
    assert account.cash == pytest.approx(9_600)


def test_liquidation_prices_and_the_margin_is_lost():
    account = Account(10_000)
    long = account.open_perp("NVDX", "long", margin=1_000, leverage=10, price=100)
    short = account.open_perp("TSLR", "short", margin=1_000, leverage=4, price=100)
    assert long.liquidation_price == pytest.approx(95.0)  # 100 x (1 - 1/10 + 0.05)
    assert short.liquidation_price == pytest.approx(120.0)  # 100 x (1 + 1/4 - 0.05)
    assert not long.is_liquidated(95.01) and long.is_liquidated(95.0)
    assert account.liquidate({"NVDX": 94.0, "TSLR": 119.0}) == ["NVDX"]
    assert account.liquidations == 1 and "NVDX" not in account.perps
    assert account.cash == pytest.approx(8_000)  # the margin is gone, nothing comes back
    assert account.realized_pnl == pytest.approx(-1_000)
    assert account.liquidate({"TSLR": 121.0}) == ["TSLR"]
    assert account.cash == pytest.approx(8_000) and account.realized_pnl == pytest.approx(-2_000)


def test_funding_longs_pay_shorts_when_the_rate_is_positive():
    long_account, short_account = Account(10_000), Account(10_000)
    long_account.open_perp("NVDX", "long", margin=1_000, leverage=5, price=100)
    short_account.open_perp("NVDX", "short", margin=1_000, leverage=5, price=100)
    rate = {"NVDX": 0.01}  # 1% per hour on $5,000 notional
    assert long_account.apply_funding({"NVDX": 100}, rate, hours=0.5) == pytest.approx(25)
    assert short_account.apply_funding({"NVDX": 100}, rate, hours=0.5) == pytest.approx(-25)
    assert long_account.close_perp("NVDX", 100) == pytest.approx(0)
    assert long_account.cash == pytest.approx(9_975) and long_account.realized_pnl == pytest.approx(-25)
    short_account.close_perp("NVDX", 100)
    assert short_account.cash == pytest.approx(10_025)


def test_a_loss_at_close_never_exceeds_the_margin():
    account = Account(10_000)
    account.open_perp("MEME", "long", margin=500, leverage=10, price=10)
    assert account.close_perp("MEME", 5) == pytest.approx(-500)  # a gap through the liquidation price
    assert account.cash == pytest.approx(9_500)


def test_bad_trades_are_refused_with_a_reason():
    account = Account(1_000)
    with pytest.raises(TradeError, match="exceeds available cash"):
        account.open_perp("NVDX", "long", margin=2_000, leverage=2, price=100)
    with pytest.raises(TradeError, match="leverage"):
        account.open_perp("NVDX", "long", margin=100, leverage=25, price=100)
    account.open_perp("NVDX", "long", margin=100, leverage=2, price=100)
    with pytest.raises(TradeError, match="CLOSE it first"):
        account.open_perp("NVDX", "short", margin=100, leverage=2, price=100)
    with pytest.raises(TradeError, match="no open position"):
        account.close_perp("TSLR", 50)
    assert account.cash == pytest.approx(900)


def test_prediction_shares_pay_a_dollar_when_they_win():
    account = Account(1_000)
    assert account.buy_prediction("pm-1", "YES", 100, yes_price=0.25) == pytest.approx(400)
    assert account.buy_prediction("pm-2", "NO", 100, yes_price=0.8) == pytest.approx(500)  # NO costs 0.20
    assert account.buy_prediction("pm-2", "YES", 80, yes_price=0.8) == pytest.approx(100)
    assert account.cash == pytest.approx(720)
    # mark-to-market before resolution
    assert account.equity({}, {"pm-1": 0.5, "pm-2": 0.8}) == pytest.approx(720 + 200 + 100 + 80)
    pnl = account.resolve_predictions({"pm-1": "YES", "pm-2": "YES"})
    assert pnl == pytest.approx((400 - 100) + (0 - 100) + (100 - 80))
    assert account.cash == pytest.approx(720 + 400 + 100) and account.predictions == {}


def test_settlement_closes_everything_at_the_marks():
    account = Account(10_000)
    account.open_perp("NVDX", "long", margin=1_000, leverage=2, price=100)
    account.buy_prediction("pm-1", "NO", 100, yes_price=0.5)
    assert account.settle({"NVDX": 105}, {"pm-1": "NO"}) == pytest.approx(100 + 100)
    assert account.perps == {} and account.trades == 2
