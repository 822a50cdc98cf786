"""Playing a window: agents are price-takers, and every dollar is accounted for."""

from datetime import UTC, datetime

import pytest

from babylon_assets.core.agent_protocol import Observation
from babylon_assets.core.market import generate_window_market
from babylon_assets.core.window_play import STARTING_BALANCE, AgentReply, ScriptedAgent, play_window

W_START = datetime(2025, 1, 15, 10, tzinfo=UTC)
MARKET = generate_window_market(11, "2025-01-15T10:00", duration_minutes=10)


class ScriptedReplies:
    """An agent that answers fixed texts, to drive the parser and the accounts exactly."""

    def __init__(self, agent_id: str, texts: list[str]) -> None:
        self.agent_id, self.archetype, self.texts = agent_id, "balanced", texts

    def start_window(self, window_id: str) -> None:
        pass

    def respond(self, system: str, user: str, observation: Observation) -> AgentReply:
        return AgentReply(text=self.texts[observation.step % len(self.texts)], model="fixed")


def prices_seen(play) -> list[str]:
    return [d.user_prompt.split("Prediction markets")[0] for d in play.decisions]


def test_what_one_agent_sees_does_not_depend_on_who_else_plays():
    crowd = [
        ScriptedAgent(f"a{i}", arch, seed=1)
        for i, arch in enumerate(["aggressive", "momentum", "contrarian", "balanced", "conservative"])
    ]
    alone = play_window(MARKET, [ScriptedAgent("a0", "aggressive", seed=1)], window_start=W_START)
    together = play_window(MARKET, crowd, window_start=W_START)
    assert prices_seen(alone[0]) == prices_seen(together[0])
    assert alone[0].final_pnl == together[0].final_pnl
    # and the market is untouched by the play
    assert generate_window_market(11, "2025-01-15T10:00", duration_minutes=10) == MARKET


def test_every_dollar_is_accounted_for():
    crowd = [
        ScriptedAgent(f"a{i}", arch, seed=2)
        for i, arch in enumerate(["aggressive", "momentum", "contrarian", "balanced", "conservative"] * 2)
    ]
    for play in play_window(MARKET, crowd, window_start=W_START):
        assert len(play.decisions) == MARKET.steps
        assert play.final_pnl == pytest.approx(play.final_balance - STARTING_BALANCE, abs=0.01)
        # step rewards are equity changes: they add up to the window's P&L
        assert sum(d.reward for d in play.decisions) * STARTING_BALANCE == pytest.approx(play.final_pnl, abs=0.1)


def test_an_unparseable_reply_is_a_recorded_hold_with_its_error():
    agent = ScriptedReplies(
        "fixed",
        [
            '{"action": "OPEN_LONG", "ticker": "NVDX", "amount": 1000, "leverage": 2}',
            "let me think about it...",
            '{"action": "OPEN_LONG", "ticker": "ZZZZ"}',
        ],
    )
    (play,) = play_window(MARKET, [agent], window_start=W_START)
    first, second, third = play.decisions[:3]
    assert first.success and first.decision.action == "OPEN_LONG" and first.result["entryPrice"] > 0
    assert second.decision.action == "HOLD" and not second.success
    assert second.error.startswith("unparseable response") and second.reply.text == "let me think about it..."
    assert not third.success and "unknown ticker" in third.error
    nvdx = MARKET.prices["NVDX"]
    expected = 1000 * 2 / nvdx[0] * (nvdx[-1] - nvdx[0])
    funding = sum(1000 * 2 / nvdx[0] * nvdx[s] * MARKET.funding_rates["NVDX"] / 60 for s in range(1, MARKET.steps + 1))
    if play.liquidations == 0:
        assert play.final_pnl == pytest.approx(expected - funding, abs=0.02)


def test_decisions_happen_in_simulated_time_inside_the_hour():
    (play,) = play_window(MARKET, [ScriptedAgent("a", "momentum", 3)], window_start=W_START)
    assert play.start == W_START and [d.at.minute for d in play.decisions] == list(range(MARKET.steps))
    assert play.end.hour == 10


def test_each_seat_is_told_who_it_is_after_the_market_and_the_seats_share_the_rest():
    from babylon_assets.core.agent_protocol import ARCHETYPES, system_prompt

    crowd = [ScriptedAgent("a0", "aggressive", seed=3), ScriptedAgent("a1", "contrarian", seed=3)]
    plays = play_window(MARKET, crowd, window_start=W_START)
    for play, agent in zip(plays, crowd, strict=True):
        for record in play.decisions:
            assert record.system_prompt == system_prompt()
            market, identity, _ = record.user_prompt.partition(f"You are {agent.agent_id}. ")
            assert identity and market.startswith("Minute ") and ARCHETYPES[agent.archetype] in record.user_prompt
    first = [d.user_prompt.split("You are ")[0] for d in plays[0].decisions]
    second = [d.user_prompt.split("You are ")[0] for d in plays[1].decisions]
    assert first[0] == second[0]  # nobody holds shares at the first decision: the whole market is shared
