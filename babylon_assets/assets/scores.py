"""Judging the window's groups through the judge interface (DESIGN 6)."""

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from babylon_assets.core.judging import JudgeGroup, JudgeResult, JudgeUsage, spearman, validate_result
from babylon_assets.core.ranking import StoredScore, groups_to_judge, rank_members
from babylon_assets.db.store import Store
from babylon_assets.db.window_records import AgentWindowScore, GroupMemberRecord, WindowRecords
from babylon_assets.partitions import WINDOW_PARTITIONS
from babylon_assets.resources.judge import JudgeResource
from babylon_assets.resources.rules import WindowRulesResource
from babylon_assets.resources.store import StoreResource

from .presentation import inline_image, metadata_table, scatter_svg
from .ranges import WINDOW_BACKFILL_POLICY, WindowMetadata, for_each_window
from .windows import market_outcomes, window_groups

SCORES_CHECK = "scores_valid"


def _judged_score(member: GroupMemberRecord) -> float:
    if member.score is None:
        raise ValueError(f"agent-window {member.agent_window_id} has no stored score")
    return member.score


def score_metadata(
    window_id: str,
    kept: list[GroupMemberRecord],
    usage: JudgeUsage,
    judged_now: int,
    judge_name: str,
    judge_version: str,
    judge_is_llm: bool,
    outcomes_recorded: bool,
) -> WindowMetadata:
    """What a person wants to see about a window's scores, from the stored rows."""
    rows = sorted(kept, key=lambda m: -_judged_score(m))
    scores = [_judged_score(m) for m in rows]
    pnls = [m.final_pnl or 0.0 for m in rows]
    best, worst = rows[0], rows[-1]
    correlation = spearman(scores, pnls)
    return {
        "window_id": window_id,
        "judge": judge_name,
        "judge_version": judge_version,
        "judge_is_llm": judge_is_llm,
        "scored": len(rows),
        "judged_now": judged_now,
        "groups": len({m.group_id for m in rows}),
        "score_min": MetadataValue.float(min(scores)),
        "score_mean": MetadataValue.float(round(sum(scores) / len(scores), 6)),
        "score_max": MetadataValue.float(max(scores)),
        "best_agent": f"{best.agent_id} (score {_judged_score(best):.3f}, P&L {pnls[0]:+,.2f})",
        "worst_agent": f"{worst.agent_id} (score {_judged_score(worst):.3f}, P&L {pnls[-1]:+,.2f})",
        "spearman_score_pnl": MetadataValue.float(round(correlation, 4))
        if correlation is not None
        else MetadataValue.text("undefined"),
        "judge_calls": usage.calls,
        "judge_tokens_in": usage.tokens_in,
        "judge_tokens_out": usage.tokens_out,
        "judge_dollars": MetadataValue.float(round(usage.dollars, 6)),
        "outcomes_recorded": outcomes_recorded,
        "scores": lambda: metadata_table(
            ["agent", "group", "P&L", "score", "rank", "reasoning"],
            [
                (
                    m.agent_id,
                    m.group_id,
                    None if m.final_pnl is None else round(m.final_pnl, 2),
                    round(_judged_score(m), 3),
                    m.rank,
                    m.reasoning,
                )
                for m in rows
            ],
        ),
        "score_vs_pnl": lambda: inline_image(
            scatter_svg(list(zip(pnls, scores, strict=True)), "P&L ($)", "score"), "score against P&L"
        ),
    }


@dataclass
class _WindowPlan:
    kept: list[GroupMemberRecord]
    groups: list[JudgeGroup]
    outcomes_recorded: bool


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

    All groups of the run go to the judge together (calls run concurrently across windows); groups already
    scored by the same judge version are not judged again, and a window whose group failed fails alone.
    """
    db = store.get_store()
    verdicts: list[tuple[str, bool, str]] = []
    plans: dict[str, _WindowPlan] = {}
    problems: dict[str, str] = {}
    chosen = judge.get_judge(cache=WindowRecords(db))
    for window_id in context.partition_keys:
        try:
            plan = _plan_window(db, rules, window_id, chosen.version)
        except Exception as error:  # noqa: BLE001 - reported as this window's failure below
            problems[window_id] = f"{type(error).__name__}: {error}"
            continue
        if plan is not None:
            plans[window_id] = plan
    groups = [group for plan in plans.values() for group in plan.groups]
    result = JudgeResult(scores={})
    if groups:
        try:
            result = asyncio.run(chosen.score(groups))
        except Exception as error:  # noqa: BLE001 - a judge that fails as a whole fails every window it was given
            result.failures.update({g.group_id: f"{type(error).__name__}: {error}" for g in groups})

    def record_window(window_id: str) -> WindowMetadata | None:
        if window_id in problems:
            raise RuntimeError(problems[window_id])
        plan = plans.get(window_id)
        if plan is None:
            context.log.info(f"window {window_id} has no kept group: nothing to judge")
            return None
        failed = {g.group_id: result.failures[g.group_id] for g in plan.groups if g.group_id in result.failures}
        if failed:
            raise RuntimeError("; ".join(failed.values()))
        members = {aw.agent_window_id for group in plan.groups for aw in group.members}
        validate_result(plan.groups, JudgeResult({k: v for k, v in result.scores.items() if k in members}))
        judged = []
        for group in plan.groups:
            by_member = {aw.agent_window_id: aw for aw in group.members}
            for place in rank_members({member: result.scores[member].score for member in by_member}):
                aw, verdict = by_member[place.member], result.scores[place.member]
                rank, normalized = place.rank, place.normalized
                judged.append(
                    (
                        AgentWindowScore(
                            aw.agent_window_id, group.group_id, verdict.score, rank, normalized, verdict.reasoning
                        ),
                        aw.trajectory_ids,
                    )
                )
        if judged:
            criteria = {"judge": chosen.name, "version": chosen.version, "is_llm": chosen.is_llm}
            WindowRecords(db).record_judgments(window_id, chosen.name, chosen.version, criteria, judged)
        stored = [m for m in WindowRecords(db).group_members(window_id) if m.kept]
        valid = len(stored) == len(plan.kept) and all(
            m.score is not None and 0.0 <= m.score <= 1.0 and m.judge_version == chosen.version for m in stored
        )
        verdicts.append(
            (
                window_id,
                valid,
                f"{sum(m.score is not None for m in stored)} of {len(plan.kept)} kept agent-windows scored in [0, 1]",
            )
        )
        usage = result.usage_by_window.get(window_id) or (result.usage if len(plans) == 1 else JudgeUsage())
        return score_metadata(
            window_id, stored, usage, len(judged), chosen.name, chosen.version, chosen.is_llm, plan.outcomes_recorded
        )

    produced = for_each_window(
        context,
        record_window,
        finish=lambda: WindowRecords(db).save_verdicts(SCORES_CHECK, verdicts, context.run.run_id),
    )
    if produced is not None:
        yield produced


def _plan_window(db: Store, rules: WindowRulesResource, window_id: str, judge_version: str) -> _WindowPlan | None:
    """The window's kept members and the groups that still need this judge's scores."""
    kept = [m for m in WindowRecords(db).group_members(window_id) if m.kept]
    if not kept:
        return None
    outcomes = db.window_outcomes(window_id)
    groups: list[JudgeGroup] = []
    needed = groups_to_judge(
        [StoredScore(str(m.group_id), m.agent_window_id, m.score, m.judge_version) for m in kept], judge_version
    )
    if needed:
        read = db.read_window(window_id, rules.eligibility())
        by_id = {aw.agent_window_id: aw for aw in read.eligible}
        gone = [i for ids in needed.values() for i in ids if i not in by_id]
        if gone:
            raise RuntimeError(
                f"window {window_id} changed since its groups were cut ({len(gone)} member(s) gone, "
                f"e.g. {gone[0]}); materialize window_groups again"
            )
        groups = [JudgeGroup(g, window_id, [by_id[i] for i in ids], outcomes) for g, ids in sorted(needed.items())]
    return _WindowPlan(kept, groups, outcomes.recorded)
