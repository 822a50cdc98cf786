"""The learning study's table (issue 20): every policy on the same held-out markets, from bench/study/*.jsonl.

Rows: the base, every arm's final checkpoint, an always-HOLD policy and the scripted archetypes (the last two played
here, in-process: they need no model). The paired interval against the base resamples markets (seed, hour).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent / "study"
PLAYS = HERE / "onpolicy-plays.jsonl"
CYCLES = HERE / "onpolicy-cycles.jsonl"
RESULTS = HERE / "onpolicy-report.md"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def rule_plays(held_out: dict, policy: str) -> list[dict]:
    """Always-HOLD or the scripted archetypes on a block's held-out markets: each seat plays its slot's archetype."""
    from datetime import timedelta

    from babylon_assets.core.agent_protocol import ARCHETYPES, HOLD
    from babylon_assets.core.market import generate_window_market
    from babylon_assets.core.paired_stats import max_drawdown
    from babylon_assets.core.window_play import AgentReply, ScriptedAgent, play_window
    from babylon_assets.core.window_time import parse_window_id, window_id_of

    archetypes = list(ARCHETYPES)

    class HoldAgent:
        def __init__(self, agent_id: str, archetype: str) -> None:
            self.agent_id, self.archetype = agent_id, archetype

        def start_window(self, window_id: str) -> None:
            pass

        def respond(self, system: str, user: str, observation) -> AgentReply:
            return AgentReply(text=HOLD.to_response(), model="rules/hold")

    start = parse_window_id(held_out["start"])
    plays = []
    for index, seed in enumerate(held_out["seeds"]):
        for hour in range(held_out["windows"]):
            at = start + timedelta(hours=index * held_out["windows"] + hour)
            market = generate_window_market(seed, window_id_of(at), duration_minutes=held_out["duration_minutes"])
            agents = []
            for i in range(held_out["agents"]):
                slot, archetype = f"{i + 1:02d}-{archetypes[i % len(archetypes)]}", archetypes[i % len(archetypes)]
                agent = HoldAgent(slot, archetype) if policy == "always-HOLD" else ScriptedAgent(slot, archetype, seed)
                agents.append(agent)
            for play in play_window(market, agents, window_start=at):
                plays.append(
                    {
                        "policy": policy,
                        "seed": seed,
                        "window_id": window_id_of(at),
                        "slot": play.agent_id,
                        "final_pnl": round(play.final_pnl, 2),
                        "decisions": len(play.decisions),
                        "unparseable": 0,
                        "max_drawdown": round(max_drawdown([d.pnl for d in play.decisions] + [play.final_pnl]), 2),
                        "actions": [d.decision.action for d in play.decisions],
                        "trades": play.trades,
                    }
                )
    return plays


def _pairs(plays: list[dict], base: list[dict]) -> list[tuple[dict, dict]]:
    """(base, policy) plays of the same seat on the same market."""
    by_key = {(p["seed"], p["window_id"], p["slot"]): p for p in base}
    return [(by_key[k], p) for p in plays if (k := (p["seed"], p["window_id"], p["slot"])) in by_key]


def row(name: str, plays: list[dict], base: list[dict] | None, extra: str = "") -> str:
    from babylon_assets.core.paired_stats import paired_bootstrap

    n = len(plays)
    if not n:
        return f"| {name} | 0 | | | | | | | | {extra} |"
    decisions = sum(p["decisions"] for p in plays)
    actions = Counter(a for p in plays for a in p.get("actions", []))
    total = sum(actions.values()) or 1
    mix = ", ".join(f"{a} {c / total:.0%}" for a, c in actions.most_common(3))
    paired = ""
    if base:
        pairs = _pairs(plays, base)
        result = paired_bootstrap(
            [c["final_pnl"] - b["final_pnl"] for b, c in pairs],
            resamples=10_000,
            seed=20,
            clusters=[(b["seed"], b["window_id"]) for b, _ in pairs],
        )
        paired = f"{result.mean:+.2f} [{result.low:+.2f}, {result.high:+.2f}] "
        paired += f"({result.pairs} pairs, {result.markets} markets)"
    return (
        f"| {name} | {n} | {sum(p['final_pnl'] for p in plays) / n:+.2f} | "
        f"{sum(1 for p in plays if p['final_pnl'] > 0) / n:.1%} | {sum(p['max_drawdown'] for p in plays) / n:.2f} | "
        f"{sum(p['unparseable'] for p in plays) / max(decisions, 1):.1%} | "
        f"{sum(p.get('trades', 0) for p in plays) / n:.2f} | "
        f"{mix} | {paired} | {extra} |"
    )


def alike(name: str, plays: list[dict], base: list[dict]) -> str:
    """How often a seat's arm and base, drawing the same random numbers, chose the same actions in the same order."""
    pairs = _pairs(plays, base)
    same = sum(1 for b, c in pairs if b.get("actions") == c.get("actions"))
    return (
        f"Common random numbers, {name}: the same actions in the same order as the base in {same} of {len(pairs)} "
        "paired agent-windows (their P&L differences come from amounts, leverage and targets, or are zero)."
    )


def report(plan: dict) -> int:
    """One table per held-out block: its arms against the base on the block's markets, with the rule policies."""
    from babylon_assets.core.on_policy import base_version

    plays = _lines(PLAYS)
    cycles = _lines(CYCLES)
    base_name = base_version(plan["base_model"])
    sections = []
    for block in dict.fromkeys(arm.get("held_out", "held_out") for arm in plan["arms"]):
        held_out = plan[block]
        arms = [arm for arm in plan["arms"] if arm.get("held_out", "held_out") == block]
        # The block's plays are on its seeds, under its arms' plan key (a hash of the seeds, the temperature, the prompt
        # version and the schema) once they have played: the base's plays of another block are not its base.
        seeds = set(held_out["seeds"])
        keys = {p["plan_key"] for arm in arms for p in plays if p["policy"] == f"{arm['name']}-final"}
        base = [
            p for p in plays if p["policy"] == base_name and p["seed"] in seeds and (not keys or p["plan_key"] in keys)
        ]
        arm_plays = {
            arm["name"]: [p for p in plays if p["policy"] == f"{arm['name']}-final" and p["seed"] in seeds]
            for arm in arms
        }
        # While a block is still being played, every row is taken on the seeds (5-hour markets) that every policy which
        # has begun has finished, so that the rows (and the pairs) stand on the same markets.
        per_market = held_out["windows"] * held_out["agents"]
        finished = [
            {seed for seed in seeds if sum(1 for p in some if p["seed"] == seed) >= per_market}
            for some in (base, *arm_plays.values())
            if some
        ]
        markets = set.intersection(*finished) if finished else set()
        base = [p for p in base if p["seed"] in markets]
        prompt = ", ".join(sorted({arm["prompt_version"] for arm in arms}))
        so_far = (
            ""
            if len(markets) == len(seeds) or not finished
            else f" (so far: the {len(markets)} of {len(seeds)} seeds that every policy begun has finished)"
        )
        lines = [
            f"### {block}: seeds {held_out['seeds'][0]}-{held_out['seeds'][-1]}, {held_out['windows']} hours each from "
            f"{held_out['start']}, {held_out['agents']} seats, temperature {held_out['temperature']:g}"
            + (", common random numbers" if held_out.get("common_random_numbers") else "")
            + f", {prompt}"
            + so_far,
            "",
            "| policy | agent-windows | mean P&L | win rate | mean drawdown | unparseable | trades / agent-window | "
            "action mix (top 3) | paired P&L vs base, 95% CI (markets resampled) | cycles, CPU |",
            "|---|---|---|---|---|---|---|---|---|---|",
            row(f"base {base_name} (structured)", base, None),
        ]
        for arm in arms:
            arm_cycles = [c for c in cycles if c["arm"] == arm["name"]]
            cpu = sum(c["cpu_seconds"] for c in arm_cycles) / 60
            played = [p for p in arm_plays[arm["name"]] if p["seed"] in markets]
            lines.append(row(arm["name"], played, base, f"{len(arm_cycles)} cycles, {cpu:.0f} CPU-min"))
        for rule in ("always-HOLD", "scripted archetypes"):
            ruled = [p for p in rule_plays(held_out, rule) if p["seed"] in markets or not finished]
            lines.append(row(rule, ruled, base, "rules"))
        if held_out.get("common_random_numbers"):
            lines += [
                "",
                *(
                    alike(arm["name"], [p for p in arm_plays[arm["name"]] if p["seed"] in markets], base)
                    for arm in arms
                ),
            ]
        sections.append("\n".join(lines))
    text = "\n\n".join(sections)
    print(text)
    RESULTS.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(report(json.loads((HERE / "plan.json").read_text())))
