"""Judging the window's groups through the judge interface (DESIGN 6)."""

import asyncio
from collections import defaultdict
from collections.abc import Iterator

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from babylon_assets.core.judging import JudgeGroup, spearman, validate_result
from babylon_assets.db.store import AgentWindowScore
from babylon_assets.partitions import WINDOW_PARTITIONS
from babylon_assets.resources.judge import JudgeResource
from babylon_assets.resources.rules import WindowRulesResource
from babylon_assets.resources.store import StoreResource

from .presentation import inline_image, markdown_table, scatter_svg
from .windows import market_outcomes, window_groups

SCORES_CHECK = "scores_valid"


def rank_group(scores: dict[str, float]) -> dict[str, tuple[int, float]]:
    """Rank 1 = best score in the group, and the score min-max normalized within the group."""
    ordered = sorted(scores, key=lambda k: (-scores[k], k))
    low, high = min(scores.values()), max(scores.values())
    return {k: (i + 1, (scores[k] - low) / (high - low) if high > low else 0.5) for i, k in enumerate(ordered)}


@asset(
    partitions_def=WINDOW_PARTITIONS,
    group_name="windows",
    deps=[window_groups, market_outcomes],
    output_required=False,
    kinds={"sql"},
)
def ruler_scores(
    context: AssetExecutionContext, store: StoreResource, rules: WindowRulesResource, judge: JudgeResource
) -> Iterator[MaterializeResult]:
    """Every kept agent-window of the window scored by the judge (RULER, or the deterministic outcome judge)."""
    window_id = context.partition_key
    db = store.get_store()
    members = db.group_members(window_id)
    kept = [m for m in members if m["kept"]]
    if not kept:
        reasons = sorted({m["reason"] for m in members}) or ["no eligible agent-windows"]
        context.log.info(f"window {window_id} has no kept group ({', '.join(reasons)}): nothing to judge")
        return
    read = db.read_window(window_id, rules.eligibility())
    by_id = {aw.agent_window_id: aw for aw in read.eligible}
    missing = [m["agent_window_id"] for m in kept if m["agent_window_id"] not in by_id]
    if missing:
        raise RuntimeError(
            f"window {window_id} changed since its groups were cut ({len(missing)} member(s) gone, e.g. "
            f"{missing[0]}); materialize window_groups again"
        )
    outcomes = db.window_outcomes(window_id)
    grouped: dict[str, list[str]] = defaultdict(list)
    for m in kept:
        grouped[m["group_id"]].append(m["agent_window_id"])
    groups = [JudgeGroup(gid, window_id, [by_id[i] for i in ids], outcomes) for gid, ids in sorted(grouped.items())]
    chosen = judge.get_judge()
    result = asyncio.run(chosen.score(groups))
    validate_result(groups, result)
    judged = []
    for group in groups:
        ranks = rank_group({aw.agent_window_id: result.scores[aw.agent_window_id].score for aw in group.members})
        for aw in group.members:
            verdict = result.scores[aw.agent_window_id]
            rank, normalized = ranks[aw.agent_window_id]
            judged.append((AgentWindowScore(aw.agent_window_id, group.group_id, verdict.score, rank, normalized,
                                            verdict.reasoning), aw.trajectory_ids))
    criteria = {"judge": chosen.name, "version": chosen.version, "is_llm": chosen.is_llm}
    db.record_judgments(window_id, chosen.name, chosen.version, criteria, judged)
    stored = {m["agent_window_id"]: m["score"] for m in db.group_members(window_id) if m["kept"]}
    valid = len(stored) == len(kept) and all(s is not None and 0.0 <= s <= 1.0 for s in stored.values())
    db.save_verdicts(SCORES_CHECK, [(window_id, valid, f"{len(stored)} of {len(kept)} kept agent-windows scored "
                                                       "in [0, 1]")], context.run.run_id)
    rows = sorted(((by_id[s.agent_window_id], s) for s, _ in judged), key=lambda pair: -pair[1].score)
    scores = [s.score for _, s in rows]
    pnls = [aw.final_pnl or 0.0 for aw, _ in rows]
    best, worst = rows[0], rows[-1]
    correlation = spearman(scores, pnls)
    usage = result.usage
    yield MaterializeResult(
        metadata={
            "window_id": window_id,
            "judge": chosen.name,
            "judge_version": chosen.version,
            "judge_is_llm": chosen.is_llm,
            "scored": len(judged),
            "groups": len(groups),
            "score_min": MetadataValue.float(min(scores)),
            "score_mean": MetadataValue.float(round(sum(scores) / len(scores), 6)),
            "score_max": MetadataValue.float(max(scores)),
            "best_agent": f"{best[0].agent_id} (score {best[1].score:.3f}, P&L {best[0].final_pnl:+,.2f})",
            "worst_agent": f"{worst[0].agent_id} (score {worst[1].score:.3f}, P&L {worst[0].final_pnl:+,.2f})",
            "spearman_score_pnl": MetadataValue.float(round(correlation, 4)) if correlation is not None
            else MetadataValue.text("undefined"),
            "judge_calls": usage.calls,
            "judge_tokens_in": usage.tokens_in,
            "judge_tokens_out": usage.tokens_out,
            "judge_dollars": MetadataValue.float(round(usage.dollars, 6)),
            "scores": markdown_table(
                ["agent", "group", "P&L", "score", "rank", "reasoning"],
                [(aw.agent_id, s.group_id, f"{aw.final_pnl:+,.2f}", f"{s.score:.3f}", s.rank, s.reasoning)
                 for aw, s in rows],
            ),
            "score_vs_pnl": inline_image(scatter_svg(list(zip(pnls, scores, strict=True)), "P&L ($)", "score"),
                                         "score against P&L"),
            "outcomes_recorded": outcomes.recorded,
            "trajectory_ids": MetadataValue.json({s.agent_window_id: ids for s, ids in judged}),
        }
    )

