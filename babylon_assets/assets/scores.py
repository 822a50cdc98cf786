"""Judging the window's groups through the judge interface (DESIGN 6)."""

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from babylon_assets.core.judging import Judge, JudgeGroup, JudgeUsage, spearman, validate_result
from babylon_assets.db.store import AgentWindowScore
from babylon_assets.partitions import WINDOW_PARTITIONS
from babylon_assets.resources.judge import JudgeResource
from babylon_assets.resources.rules import WindowRulesResource
from babylon_assets.resources.store import StoreResource

from .presentation import inline_image, markdown_table, scatter_svg
from .ranges import WINDOW_BACKFILL_POLICY, WindowMetadata, for_each_window
from .windows import market_outcomes, window_groups

SCORES_CHECK = "scores_valid"


def rank_group(scores: dict[str, float]) -> dict[str, tuple[int, float]]:
    """Rank 1 = best score in the group, and the score min-max normalized within the group."""
    ordered = sorted(scores, key=lambda k: (-scores[k], k))
    low, high = min(scores.values()), max(scores.values())
    return {k: (i + 1, (scores[k] - low) / (high - low) if high > low else 0.5) for i, k in enumerate(ordered)}


def score_metadata(window_id: str, kept: list[dict[str, Any]], usage: JudgeUsage, judged_now: int,
                   judge_name: str, judge_version: str, judge_is_llm: bool, outcomes_recorded: bool) -> WindowMetadata:
    """What a person wants to see about a window's scores, from the stored rows."""
    rows = sorted(kept, key=lambda m: -m["score"])
    scores = [m["score"] for m in rows]
    pnls = [m["final_pnl"] or 0.0 for m in rows]
    best, worst = rows[0], rows[-1]
    correlation = spearman(scores, pnls)
    return {
        "window_id": window_id,
        "judge": judge_name,
        "judge_version": judge_version,
        "judge_is_llm": judge_is_llm,
        "scored": len(rows),
        "judged_now": judged_now,
        "groups": len({m["group_id"] for m in rows}),
        "score_min": MetadataValue.float(min(scores)),
        "score_mean": MetadataValue.float(round(sum(scores) / len(scores), 6)),
        "score_max": MetadataValue.float(max(scores)),
        "best_agent": f"{best['agent_id']} (score {best['score']:.3f}, P&L {best['final_pnl']:+,.2f})",
        "worst_agent": f"{worst['agent_id']} (score {worst['score']:.3f}, P&L {worst['final_pnl']:+,.2f})",
        "spearman_score_pnl": MetadataValue.float(round(correlation, 4)) if correlation is not None
        else MetadataValue.text("undefined"),
        "judge_calls": usage.calls,
        "judge_tokens_in": usage.tokens_in,
        "judge_tokens_out": usage.tokens_out,
        "judge_dollars": MetadataValue.float(round(usage.dollars, 6)),
        "outcomes_recorded": outcomes_recorded,
        "scores": lambda: markdown_table(
            ["agent", "group", "P&L", "score", "rank", "reasoning"],
            [(m["agent_id"], m["group_id"], f"{m['final_pnl']:+,.2f}", f"{m['score']:.3f}", m["rank"], m["reasoning"])
             for m in rows],
        ),
        "score_vs_pnl": lambda: inline_image(scatter_svg(list(zip(pnls, scores, strict=True)), "P&L ($)", "score"),
                                             "score against P&L"),
    }


@asset(
    partitions_def=WINDOW_PARTITIONS,
    backfill_policy=WINDOW_BACKFILL_POLICY,
    group_name="windows",
    deps=[window_groups, market_outcomes],
    output_required=False,
    kinds={"sql"},
)
def ruler_scores(
    context: AssetExecutionContext, store: StoreResource, rules: WindowRulesResource, judge: JudgeResource
) -> Iterator[MaterializeResult]:
    """Every kept agent-window of the window scored by the judge (RULER, or the deterministic outcome judge).

    Groups already scored by the same judge version are not judged again (a retry redoes only what failed).
    """
    db = store.get_store()
    chosen_judges: list[Judge] = []
    verdicts: list[tuple[str, bool, str]] = []

    def score_window(window_id: str) -> WindowMetadata | None:
        kept = [m for m in db.group_members(window_id) if m["kept"]]
        if not kept:
            context.log.info(f"window {window_id} has no kept group: nothing to judge")
            return None
        # The judge is built only for a window that has something to judge.
        if not chosen_judges:
            chosen_judges.append(judge.get_judge())
        chosen = chosen_judges[0]
        stale: dict[str, list[str]] = defaultdict(list)
        for m in kept:
            if m["score"] is None or m["judge_version"] != chosen.version:
                stale[m["group_id"]].append(m["agent_window_id"])
        outcomes = db.window_outcomes(window_id)
        usage = JudgeUsage()
        judged_now = 0
        if stale:
            members_by_group: dict[str, list[str]] = defaultdict(list)
            for m in kept:
                if m["group_id"] in stale:
                    members_by_group[m["group_id"]].append(m["agent_window_id"])
            read = db.read_window(window_id, rules.eligibility())
            by_id = {aw.agent_window_id: aw for aw in read.eligible}
            gone = [i for ids in members_by_group.values() for i in ids if i not in by_id]
            if gone:
                raise RuntimeError(f"window {window_id} changed since its groups were cut ({len(gone)} member(s) "
                                   f"gone, e.g. {gone[0]}); materialize window_groups again")
            groups = [JudgeGroup(g, window_id, [by_id[i] for i in ids], outcomes)
                      for g, ids in sorted(members_by_group.items())]
            result = asyncio.run(chosen.score(groups))
            validate_result(groups, result)
            usage = result.usage
            judged = []
            for group in groups:
                ranks = rank_group({aw.agent_window_id: result.scores[aw.agent_window_id].score
                                    for aw in group.members})
                for aw in group.members:
                    verdict = result.scores[aw.agent_window_id]
                    rank, normalized = ranks[aw.agent_window_id]
                    judged.append((AgentWindowScore(aw.agent_window_id, group.group_id, verdict.score, rank,
                                                    normalized, verdict.reasoning), aw.trajectory_ids))
            criteria = {"judge": chosen.name, "version": chosen.version, "is_llm": chosen.is_llm}
            db.record_judgments(window_id, chosen.name, chosen.version, criteria, judged)
            judged_now = len(judged)
        stored = [m for m in db.group_members(window_id) if m["kept"]]
        valid = all(m["score"] is not None and 0.0 <= m["score"] <= 1.0 and m["judge_version"] == chosen.version
                    for m in stored) and len(stored) == len(kept)
        verdicts.append((window_id, valid, f"{sum(m['score'] is not None for m in stored)} of {len(kept)} kept "
                                           "agent-windows scored in [0, 1]"))
        return score_metadata(window_id, stored, usage, judged_now, chosen.name, chosen.version, chosen.is_llm,
                              outcomes.recorded)

    result = for_each_window(context, score_window,
                             finish=lambda: db.save_verdicts(SCORES_CHECK, verdicts, context.run.run_id))
    if result is not None:
        yield result
