"""Does on-policy GRPO through the platform's own loop make SmolLM2-135M-Instruct trade better than its base? The
resumable study of issue 20, run as `bench/study/plan.json` (committed before any held-out play) says.

    make llm-build                           # once: llama-server
    python bench/learning_study.py           # the next chunk (under --chunk-minutes); run again until it reports
    python bench/learning_study.py --report  # the table from what is stored so far

Each arm lives in .babylon/learning-study/<arm>: its own SQLite store, Dagster instance, checkpoints and W&B files.
Phases, each resumed where it stopped:

1. learn     the arm's cycles through the loop (`babylon learn`'s run_learning_cycles): rollouts by the newest
             checkpoint (the base first) on the plan's rollout hours, the window graph, one GRPO step;
2. evaluate  the base and the arm's final checkpoint play the arm's held-out markets once (structured output, at the
             block's temperature), market by market; every finished market appended to
             bench/study/onpolicy-plays.jsonl, which is committed;
3. report    per held-out block: base, arm, always-HOLD and the scripted archetypes on the same markets: mean P&L,
             win rate, drawdown, unparseable rate, trades, action mix, cycles and CPU time; the paired interval
             resamples markets.

Each arm names its held-out block (an arm designed after seeing held-out numbers gets fresh seeds) and the prompt
version it plays under; an arm of an earlier prompt version is reported from its committed plays, not played again.
An arm's learning resumes within one checkout (its store lives under --root, not committed); its final adapter and
every play are committed, so evaluation and the report resume in any checkout.

The numbers are whatever they are: a 135M model and 2 CPU cores bound what this can show.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("PYTHON_DOTENV_DISABLED", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HERE = Path(__file__).resolve().parent / "study"
PLAN = HERE / "plan.json"
PLAYS = HERE / "onpolicy-plays.jsonl"
CYCLES = HERE / "onpolicy-cycles.jsonl"


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def arm_settings(plan: dict, arm: dict, folder: Path):
    from babylon_assets.settings import Settings

    held_out, rollouts = plan[arm.get("held_out", "held_out")], plan["rollouts"]
    return Settings(
        DATABASE_URL=f"sqlite:///{folder / 'study.db'}",
        DAGSTER_HOME=str(folder / "dagster"),
        ART_PATH=str(folder / ".art"),
        WANDB_DIR=str(folder / "wandb"),
        ROLLOUT_SERVER_FOLDER=str(folder / "rollout-server"),
        MODEL_NAME=arm["name"],
        BASE_MODEL=plan["base_model"],
        ON_POLICY=True,
        ITERATIONS=arm["iterations_per_cycle"],
        WINDOWS_PER_ITERATION=arm["windows_per_cycle"],
        NEW_WINDOWS_BEFORE_RETRAIN=arm["windows_per_cycle"],
        LEARNING_RATE=arm["learning_rate"],
        LORA_RANK=arm["lora_rank"],
        KL_COEF=arm["kl_coef"],
        CLIP_EPSILON=arm["clip_epsilon"],
        IMPORTANCE_WEIGHT_CAP=arm["importance_weight_cap"],
        MASK_FORCED_TOKENS=arm["mask_forced_tokens"],
        MAX_STEPS_OFF_POLICY=arm["max_steps_off_policy"],
        MIN_ACTIONS=arm["min_actions"],
        MIN_AGENTS=arm["min_agents"],
        TRAIN_SEED=arm["train_seed"],
        MICRO_BATCH_SIZE=arm.get("micro_batch_size", 4),
        # Every arm so far trained in float32 (TRAIN_PRECISION came later): an arm trains as its plan says.
        TRAIN_PRECISION=arm.get("trainer_precision", "float32"),
        KEEP_CHECKPOINTS=3,
        ROLLOUT_START=rollouts["start"],
        ROLLOUT_SEED=rollouts["seed"],
        ROLLOUT_AGENTS=rollouts["agents"],
        ROLLOUT_DECISIONS=rollouts["decisions"],
        ROLLOUT_TEMPERATURE=rollouts["temperature"],
        ROLLOUT_PARALLEL=rollouts["agents"],
        EVAL_SEEDS=",".join(str(s) for s in held_out["seeds"]),
        EVAL_WINDOWS=held_out["windows"],
        EVAL_AGENTS=held_out["agents"],
        EVAL_DURATION_MINUTES=held_out["duration_minutes"],
        EVAL_START=held_out["start"],
        EVAL_TEMPERATURE=held_out["temperature"],
        # Blocks committed before common random numbers existed played a fresh seed a call: their key stays theirs.
        EVAL_COMMON_RANDOM_NUMBERS=held_out.get("common_random_numbers", False),
        WANDB_MODE="offline",
    )


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return sum(u.ru_utime + u.ru_stime for u in usage)


def stored(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def fingerprint(checkpoint: Path | None) -> str:
    if checkpoint is None:
        return "smollm2-q4_1"
    return hashlib.sha256((checkpoint / "adapter_model.safetensors").read_bytes()).hexdigest()[:16]


def committed_steps(adapter: Path) -> int:
    """The training steps of an arm's committed final adapter (0 when none is committed)."""
    state = adapter / "trainer_state.json"
    return int(json.loads(state.read_text())["step"]) if state.is_file() else 0


def learn(plan: dict, arm: dict, folder: Path, out_of_time) -> Path | None:
    """Run the arm's remaining cycles; the newest checkpoint's folder once all are done (else None)."""
    from dagster import DagsterInstance

    from babylon_assets.db.evaluation_records import EvaluationRecords
    from babylon_assets.db.store import Store
    from babylon_assets.definitions import build_definitions
    from babylon_assets.orchestration.instance import prepare_dagster_home
    from babylon_assets.orchestration.learning import run_learning_cycles

    settings = arm_settings(plan, arm, folder)
    os.environ["DAGSTER_HOME"] = settings.DAGSTER_HOME
    store = Store.from_settings(settings)
    store.upgrade()
    records = EvaluationRecords(store)

    def done() -> int:
        newest = records.newest_checkpoint(arm["name"])
        return int(str(newest.modelId).rsplit("@", 1)[1]) if newest else 0

    prepare_dagster_home(settings)
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        while done() < arm["cycles"] and not out_of_time():
            began, cpu = time.monotonic(), cpu_seconds()
            (report,) = run_learning_cycles(defs, instance, store, settings, 1, arm["windows_per_cycle"])
            metrics = report.metrics
            line = {
                "arm": arm["name"],
                "cycle": done(),
                "hours": report.hours,
                "model_version": report.outcome.model_version,
                "seconds": {k: round(v, 1) for k, v in report.seconds.items()},
                "cpu_seconds": round(cpu_seconds() - cpu, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "reward_mean": report.outcome.rewards.mean,
                "pnl_mean": report.outcome.pnl.mean,
                "groups": report.outcome.groups.trainable,
                "metrics": {k: round(v, 5) for k, v in metrics.items()},
            }
            with CYCLES.open("a") as handle:
                handle.write(json.dumps(line) + "\n")
            log(
                f"{arm['name']}: cycle {line['cycle']}/{arm['cycles']} in {time.monotonic() - began:.0f} s, "
                f"reward {report.outcome.rewards}, P&L {report.outcome.pnl}, loss {metrics.get('loss', 0):+.4f}, "
                f"top action {metrics.get('policy_top_action_share', 0):.0%}, "
                f"trades/aw {metrics.get('policy_trades_per_agent_window', 0):.2f}, "
                f"engine KL {metrics.get('engine_kl', 0):.4f}, IS weight {metrics.get('importance_weight_mean', 1):.3f}"
            )
    if done() < arm["cycles"]:
        return None
    newest = records.newest_checkpoint(arm["name"])
    assert newest is not None
    return Path(str(newest.storagePath))


def evaluate(
    plan: dict, arm: dict, folder: Path, checkpoint: Path | None, policy: str, out_of_time, markets: int
) -> int:
    """Play up to `markets` more held-out markets with one policy (the base when checkpoint is None), one at a
    time; how many markets it still has to play."""
    from babylon_assets.core.paired_stats import PlayResult
    from babylon_assets.db.evaluation_records import EvaluationRecords
    from babylon_assets.db.store import Store
    from babylon_assets.promotion.evaluation import EvaluationPlan, local_policy_server, play_policy

    settings = arm_settings(plan, arm, folder)
    store = Store.from_settings(settings)
    store.upgrade()
    held_out = EvaluationPlan.from_settings(settings)
    records = EvaluationRecords(store)
    print_ = fingerprint(checkpoint)
    known = [
        line
        for line in stored(PLAYS)
        if line["plan_key"] == held_out.key and line["policy"] == policy and line["fingerprint"] == print_
    ]
    fields = set(PlayResult.__dataclass_fields__)
    records.save_plays(held_out.key, [PlayResult(**{k: v for k, v in line.items() if k in fields}) for line in known])
    serve = local_policy_server(
        folder / "eval" / policy.replace("/", "_").replace(":", "_"), plan["base_model"], checkpoint, policy
    )
    for _ in range(markets):
        if len(records.plays(held_out.key, policy)) >= held_out.agent_windows or out_of_time():
            break
        began = time.monotonic()
        play_policy(store, held_out, policy, serve, now=datetime.now(UTC), max_markets=1)
        have = {(line["seed"], line["window_id"], line["slot"]) for line in known}
        with PLAYS.open("a") as handle:
            for play in records.plays(held_out.key, policy):
                if (play.seed, play.window_id, play.slot) not in have:
                    line = {"plan_key": held_out.key, "fingerprint": print_, **asdict(play)}
                    line["actions"] = actions_of(store, play.trajectory_id)
                    line["trades"] = trades_of(store, play.trajectory_id)
                    handle.write(json.dumps(line) + "\n")
                    known.append(line)
        log(f"evaluate {policy}: {len(records.plays(held_out.key, policy))} plays ({time.monotonic() - began:.0f} s)")
    per_market = held_out.windows * held_out.agents
    return (held_out.agent_windows - len(records.plays(held_out.key, policy)) + per_market - 1) // per_market


def actions_of(store, trajectory_id: str | None) -> list[str]:
    from babylon_assets.core.agent_protocol import parse_or_hold

    if not trajectory_id:
        return []
    from sqlalchemy import select

    from babylon_assets.db.schema import LlmCallLog

    with store.engine.connect() as connection:
        rows = connection.execute(
            select(LlmCallLog.response).where(LlmCallLog.trajectoryId == trajectory_id).order_by(LlmCallLog.stepId)
        ).scalars()
        return [parse_or_hold(text or "")[0].action for text in rows]


def trades_of(store, trajectory_id: str | None) -> int:
    from sqlalchemy import select

    from babylon_assets.db.schema import Trajectory

    if not trajectory_id:
        return 0
    with store.engine.connect() as connection:
        value = connection.execute(
            select(Trajectory.tradesExecuted).where(Trajectory.trajectoryId == trajectory_id)
        ).scalar()
    return int(value or 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=".babylon/learning-study")
    parser.add_argument("--chunk-minutes", type=float, default=50.0)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    plan = json.loads(PLAN.read_text())
    started = time.monotonic()

    def out_of_time() -> bool:
        return time.monotonic() - started > args.chunk_minutes * 60

    if args.report:
        from bench.learning_study_report import report

        return report(plan)
    from babylon_assets.core.agent_protocol import PROMPT_VERSION

    for arm in plan["arms"]:
        if arm["prompt_version"] != PROMPT_VERSION:
            # Played under an earlier prompt: its committed plays are what it reports; playing it again would be
            # other play (the plan's key includes the prompt version).
            log(f"{arm['name']}: played under {arm['prompt_version']}, reported from its committed plays")
            continue
        folder = Path(args.root).resolve() / arm["name"]
        folder.mkdir(parents=True, exist_ok=True)
        adapter = HERE / "adapters" / arm["name"]
        if committed_steps(adapter) >= arm["cycles"]:
            # Trained in an earlier session: its committed final adapter is what plays (a new checkout has no store).
            checkpoint = adapter
            log(f"{arm['name']}: trained ({committed_steps(adapter)} steps), its committed adapter plays")
        else:
            checkpoint = learn(plan, arm, folder, out_of_time)
        if checkpoint is None:
            log(f"chunk over ({args.chunk_minutes:g} min) while {arm['name']} learns: run again to go on")
            return 0
        if checkpoint != adapter and (
            not (adapter / "adapter_model.safetensors").is_file() or fingerprint(adapter) != fingerprint(checkpoint)
        ):
            adapter.mkdir(parents=True, exist_ok=True)
            for name in ("adapter_model.safetensors", "adapter_config.json", "trainer_state.json"):
                shutil.copyfile(checkpoint / name, adapter / name)
            (adapter / "FINGERPRINT").write_text(fingerprint(checkpoint) + "\n")
        from babylon_assets.core.on_policy import base_version

        # A market at a time, by the policy that has played fewer (the base on a tie), so that a chunk that ends
        # mid-evaluation, in any session, leaves paired markets behind (both policies on the same seeds).
        policies = {base_version(plan["base_model"]): None, f"{arm['name']}-final": checkpoint}
        left = {
            policy: evaluate(plan, arm, folder, served, policy, out_of_time, 0) for policy, served in policies.items()
        }
        while any(left.values()):
            if out_of_time():
                log(f"chunk over ({args.chunk_minutes:g} min) while {arm['name']} is evaluated: run again to go on")
                return 0
            policy = max(left, key=left.__getitem__)  # the first of equals: the base
            left[policy] = evaluate(plan, arm, folder, policies[policy], policy, out_of_time, 1)
    from bench.learning_study_report import report

    return report(plan)


if __name__ == "__main__":
    raise SystemExit(main())
