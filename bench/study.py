"""Does GRPO on simulated play make SmolLM2-135M trade better than its base? A resumable study (issue 12).

    make local-llm                       # once: llama-server and SmolLM2's GGUF
    python bench/study.py                # the next chunk (under --chunk-minutes); run again until it reports
    python bench/study.py --report       # the table from what is stored so far

Two arms, each against the same base plays: GRPO alone (the defaults), and GRPO after a supervised warm
start on the judge's best agent-windows:

    python bench/study.py --dir .babylon/study-sft --model-name study-sft --warm-start 2

Everything lives in --dir (default .babylon/study): its own SQLite store, Dagster instance, checkpoints
and W&B files, so the study never mixes with other play. Each phase stores its results as it finishes
and is skipped once done, so the study spans sessions:

1. play     scripted agents play --train-windows hours (the training play; the judge's ground truth);
2. score    the window graph scores them (the outcome judge) and builds the training dataset;
3. train    SmolLM2-135M, LoRA rank 8, --iterations GRPO steps, one window a step, --decisions decisions of
            each agent-window, prompts cut to their last --max-tokens tokens; with --warm-start N, first
            supervised fine-tuning (ART's `model.train_sft`) on the N best-judged agent-windows of every
            window (the same decisions), so the policy answers in the decision format before GRPO starts;
4. evaluate base and checkpoint play the held-out markets (isEvaluation) through the gateway on local
            llama.cpp servers, market by market, each market stored as it finishes;
5. report   the paired P&L difference with its bootstrap 95% interval and both unparseable rates.

The numbers are whatever they are: a 135M model and 2 CPU cores bound what this can show.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from babylon_assets.db.window_records import WindowRecords

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("PYTHON_DOTENV_DISABLED", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TRAIN_START = datetime(2025, 6, 1, tzinfo=UTC)
# Every evaluation play the study finishes, appended as it finishes and committed with the code: a new
# checkout (whose .babylon is empty) loads them back and plays only what is missing. A checkpoint's plays
# are tied to its adapter's fingerprint: a retrained adapter that differs is played again.
RESULTS = Path(__file__).resolve().parent / "study" / "plays.jsonl"


def adapter_fingerprint(checkpoint: Path) -> str:
    import hashlib

    return hashlib.sha256((checkpoint / "adapter_model.safetensors").read_bytes()).hexdigest()[:16]


def stored_lines() -> list[dict]:
    if not RESULTS.is_file():
        return []
    return [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]


def load_plays(records, plan_key: str, policy: str, fingerprint: str) -> int:
    """Put this policy's committed plays (same plan, same adapter) back into the study's store."""
    from babylon_assets.core.paired_stats import PlayResult

    plays = [
        PlayResult(**{k: v for k, v in line.items() if k not in ("plan_key", "fingerprint")})
        for line in stored_lines()
        if line["plan_key"] == plan_key and line["policy"] == policy and line["fingerprint"] == fingerprint
    ]
    return records.save_plays(plan_key, plays)


def save_plays(records, plan_key: str, policy: str, fingerprint: str) -> None:
    """Append this policy's plays that the results file does not hold yet."""
    from dataclasses import asdict

    held = {
        (line["plan_key"], line["policy"], line["seed"], line["window_id"], line["slot"], line["fingerprint"])
        for line in stored_lines()
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as out:
        for play in records.plays(plan_key, policy):
            if (plan_key, policy, play.seed, play.window_id, play.slot, fingerprint) not in held:
                out.write(json.dumps({"plan_key": plan_key, "fingerprint": fingerprint, **asdict(play)}) + "\n")


def study_settings(args: argparse.Namespace):
    from babylon_assets.gateway.server import free_port
    from babylon_assets.settings import Settings

    folder = Path(args.dir).resolve()
    return Settings(
        DATABASE_URL=f"sqlite:///{folder / 'study.db'}",
        DAGSTER_HOME=str(folder / "dagster"),
        ON_POLICY=False,  # issue 12's study trained on scripted play (the offline path)
        ART_PATH=str(folder / ".art"),
        WANDB_DIR=str(folder / "wandb"),
        MODEL_NAME=args.model_name,
        BASE_MODEL="HuggingFaceTB/SmolLM2-135M-Instruct",
        ITERATIONS=args.iterations,
        WINDOWS_PER_ITERATION=1,
        DECISIONS_PER_TRAJECTORY=args.decisions,
        MAX_SEQUENCE_TOKENS=args.max_tokens,
        LEARNING_RATE=args.learning_rate,
        KEEP_CHECKPOINTS=2,
        EVAL_SEEDS=",".join(str(101 + i) for i in range(args.eval_seeds)),
        EVAL_WINDOWS=args.eval_windows,
        EVAL_AGENTS=8,
        EVAL_DURATION_MINUTES=args.eval_minutes,
        EVAL_START="2024-11-01T00:00",
        EVAL_MAX_TOKENS=args.eval_max_tokens,
        SERVING_FILE=str(folder / "serving.json"),
        LIVE_CLOCK_FILE=str(folder / "clock.json"),
        LOCAL_LLM_PORT=free_port(),
        WANDB_MODE="offline",
    )


def warm_start_marker(folder: Path, args: argparse.Namespace) -> Path:
    """Written when this arm's warm start has finished: its steps and what it trained on."""
    return folder / f"{args.model_name}.warm_start.json"


def warm_start_steps(folder: Path, args: argparse.Namespace) -> int:
    """How many SFT steps this arm's warm start took (0 when it has none or it has not finished)."""
    marker = warm_start_marker(folder, args)
    return int(json.loads(marker.read_text())["steps"]) if marker.is_file() else 0


def warm_start(store, settings, folder: Path, args: argparse.Namespace) -> int:
    """SFT on the best-judged agent-windows of every window of the dataset; a marker says it finished.

    An unfinished warm start (no marker) is started again from the base: its partial checkpoints go.
    """
    import asyncio
    import random
    import shutil

    import art
    from art.types import TrainSFTConfig

    from babylon_assets.core.training_plan import best_of_groups, sample_decisions
    from babylon_assets.training.art_trajectories import to_art_trajectory
    from babylon_assets.training.dataset_export import agent_windows_of
    from babylon_assets.training.torch_backend import SFT_AUTO_BATCH, make_backend

    model_folder = Path(settings.ART_PATH) / settings.PROJECT_NAME / "models" / settings.MODEL_NAME
    shutil.rmtree(model_folder, ignore_errors=True)
    latest = WindowRecords(store).latest_dataset()
    assert latest is not None, "the dataset is built before the warm start"
    members = latest[1]
    chosen = set(
        best_of_groups(
            [(str(m["group_id"]), str(m["agent_window_id"]), float(m["reward"])) for m in members],
            per_group=args.warm_start,
        )
    )
    trajectories = []
    for window_id in sorted({str(m["window_id"]) for m in members}):
        for agent_window in agent_windows_of(store, window_id).values():
            if agent_window.agent_window_id in chosen and agent_window.llm_decisions > 0:
                trajectories.append(
                    to_art_trajectory(
                        agent_window,
                        1.0,
                        None,
                        sample_decisions(
                            agent_window.llm_decisions,
                            args.decisions,
                            settings.TRAIN_SEED,
                            0,
                            agent_window.agent_window_id,
                        ),
                    )
                )
    began = time.monotonic()

    async def train() -> int:
        backend = make_backend(settings)
        model = art.TrainableModel(
            name=settings.MODEL_NAME, project=settings.PROJECT_NAME, base_model=settings.BASE_MODEL
        )
        await model.register(backend)
        # Each epoch in its own seeded order, so batches mix windows instead of walking through time.
        epochs = [
            random.Random(f"{settings.TRAIN_SEED}:{epoch}").sample(trajectories, len(trajectories))
            for epoch in range(args.warm_start_epochs)
        ]
        config = TrainSFTConfig(batch_size=SFT_AUTO_BATCH, learning_rate=args.warm_start_learning_rate)
        await model.train_sft([t for epoch in epochs for t in epoch], config)
        step = await model.get_step()
        await backend.close()
        return step

    steps = asyncio.run(train())
    warm_start_marker(folder, args).write_text(
        json.dumps(
            {
                "steps": steps,
                "agent_windows": len(trajectories),
                "decisions": args.decisions,
                "epochs": args.warm_start_epochs,
                "learning_rate": args.warm_start_learning_rate,
                "minutes": round((time.monotonic() - began) / 60, 1),
            }
        )
    )
    log(
        f"warm start: {steps} SFT steps, {args.warm_start_epochs} epochs of the best {args.warm_start} "
        f"agent-window(s) of each window ({len(trajectories)} agent-windows, {args.decisions} decisions each) in "
        f"{(time.monotonic() - began) / 60:.1f} min"
    )
    return steps


def trades_executed(store, plays) -> list[int]:
    """Trades each play executed (its trajectory's tradesExecuted), for the plays this store holds: a
    decision can parse and still not trade (an unknown ticker, no cash), which the unparseable rate misses."""
    from sqlalchemy import select

    from babylon_assets.db.schema import Trajectory

    ids = [p.trajectory_id for p in plays if p.trajectory_id]
    found: dict[str, int] = {}
    with store.engine.connect() as connection:
        for start in range(0, len(ids), 500):
            rows = connection.execute(
                select(Trajectory.trajectoryId, Trajectory.tradesExecuted).where(
                    Trajectory.trajectoryId.in_(ids[start : start + 500])
                )
            )
            found.update({row.trajectoryId: int(row.tradesExecuted or 0) for row in rows})
    return [found[i] for i in ids if i in found]


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=".babylon/study")
    parser.add_argument("--train-windows", type=int, default=48)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--decisions", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--model-name", default="study-mmo", help="One arm of the study (its checkpoints' name).")
    parser.add_argument(
        "--warm-start",
        type=int,
        default=0,
        metavar="N",
        help="Before GRPO, SFT on the N best-judged agent-windows of every window (0: none).",
    )
    parser.add_argument("--warm-start-learning-rate", type=float, default=1e-3)
    parser.add_argument("--warm-start-epochs", type=int, default=2)
    parser.add_argument("--eval-seeds", type=int, default=5)
    parser.add_argument("--eval-windows", type=int, default=5)
    parser.add_argument("--eval-minutes", type=int, default=3)
    parser.add_argument("--eval-max-tokens", type=int, default=96)
    parser.add_argument("--chunk-minutes", type=float, default=50.0)
    parser.add_argument("--report", action="store_true", help="Only print the table from what is stored.")
    args = parser.parse_args()

    from babylon_assets.core.window_time import window_id_of
    from babylon_assets.db.evaluation_records import EvaluationRecords
    from babylon_assets.db.store import Store
    from babylon_assets.promotion.evaluation import EvaluationOptions, EvaluationPlan, base_policy

    settings = study_settings(args)
    folder = Path(args.dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = settings.DAGSTER_HOME
    store = Store.from_settings(settings)
    store.upgrade()
    started = time.monotonic()
    budget = args.chunk_minutes * 60

    def out_of_time() -> bool:
        return time.monotonic() - started > budget

    plan = EvaluationPlan.from_settings(settings)
    options = EvaluationOptions(
        plan=plan,
        base_model=settings.BASE_MODEL,
        resamples=settings.EVAL_BOOTSTRAP_RESAMPLES,
        work_folder=folder / "eval",
    )
    if args.report:
        return report(store, settings, options)
    train_hours = [window_id_of(TRAIN_START + timedelta(hours=h)) for h in range(args.train_windows)]

    # 1. play
    if len(store.windows_with_outcomes(train_hours)) < len(train_hours):
        from babylon_assets.play.simulator import SimulationPlan, simulate

        summary = simulate(
            store,
            SimulationPlan(agents=8, windows=args.train_windows, duration_minutes=10, seed=7, start=TRAIN_START),
            now=datetime.now(UTC),
        )
        log(f"play: {summary.written} trajectories in {len(train_hours)} hours")

    # 2. score and 3. train, through the asset graph on the study's own instance
    records = EvaluationRecords(store)
    newest = records.newest_checkpoint(settings.MODEL_NAME)
    warm_steps = warm_start_steps(folder, args)
    trained = int(str(newest.modelId).rsplit("@", 1)[1]) - warm_steps if newest else 0
    if trained < args.iterations:
        from dagster import DagsterInstance

        from babylon_assets.definitions import build_definitions
        from babylon_assets.orchestration.instance import prepare_dagster_home
        from babylon_assets.orchestration.pipeline import (
            materialize_training,
            materialize_training_dataset,
            materialize_windows,
        )

        prepare_dagster_home(settings)
        remaining = settings.model_copy(update={"ITERATIONS": args.iterations - trained})
        defs = build_definitions(remaining)
        until = window_id_of(TRAIN_START + timedelta(hours=args.train_windows))
        with DagsterInstance.get() as instance:
            if WindowRecords(store).latest_dataset() is None:
                runs = materialize_windows(defs, train_hours, instance)
                log(f"score: {sum(r.windows for r in runs if r.success)} windows scored")
                assert materialize_training_dataset(defs, instance, until=until).success
            if args.warm_start and not warm_steps:
                warm_steps = warm_start(store, settings, folder, args)
            log(f"train: GRPO steps {warm_steps + trained + 1}..{warm_steps + args.iterations}")
            run = materialize_training(defs, instance, until=until)
            if not run.success:
                log(f"training run {run.run_id} failed: see {settings.DAGSTER_HOME}")
                return 1
        newest = records.newest_checkpoint(settings.MODEL_NAME)
        log(f"train: {newest['modelId']} at {newest['storagePath']} ({(time.monotonic() - started) / 60:.1f} min)")
        if out_of_time():
            return 0

    # 4. evaluate, market by market
    from babylon_assets.promotion.evaluation import local_policy_server, play_policy

    assert newest is not None
    version = str(newest.modelId)
    policies = [
        (
            base_policy(settings.BASE_MODEL),
            local_policy_server(folder / "eval" / "base", settings.BASE_MODEL, None, "base"),
        ),
        (
            version,
            local_policy_server(
                folder / "eval" / "checkpoint", settings.BASE_MODEL, Path(str(newest.storagePath)), version
            ),
        ),
    ]
    fingerprints = {policies[0][0]: "smollm2-q4_1", version: adapter_fingerprint(Path(str(newest.storagePath)))}
    for policy, serve in policies:
        loaded = load_plays(records, plan.key, policy, fingerprints[policy])
        if loaded:
            log(f"evaluate: {policy}: {loaded} plays loaded from {RESULTS.name}")
        save_plays(records, plan.key, policy, fingerprints[policy])  # what an earlier chunk stored here
        while len(records.plays(plan.key, policy)) < plan.agent_windows:
            if out_of_time():
                log(f"chunk over ({args.chunk_minutes:g} min): run again to go on")
                return 0
            began = time.monotonic()
            play_policy(
                store,
                plan,
                policy,
                serve,
                now=datetime.now(UTC),
                max_markets=1,
                on_market=lambda p, seed, n, began=began: log(
                    f"evaluate: {p} seed {seed}: {n} agent-windows in {time.monotonic() - began:.0f} s"
                ),
            )
            save_plays(records, plan.key, policy, fingerprints[policy])
    return report(store, settings, options, version)


def report(store, settings, options, version: str | None = None) -> int:
    from babylon_assets.core.paired_stats import evaluate
    from babylon_assets.db.evaluation_records import EvaluationRecords
    from babylon_assets.promotion.evaluation import base_policy

    records = EvaluationRecords(store)
    if version is None:
        newest = records.newest_checkpoint(settings.MODEL_NAME)
        if newest is None:
            print("no checkpoint yet")
            return 1
        version = str(newest.modelId)
    base = records.plays(options.plan.key, base_policy(settings.BASE_MODEL))
    candidate = records.plays(options.plan.key, version)
    result = evaluate(
        base, candidate, plan=options.plan.as_json(), resamples=options.resamples, seed=int(options.plan.key[:8], 16)
    )
    paired = result.paired
    lines = [
        f"Study: {version} (SmolLM2-135M-Instruct + LoRA) vs its base, held-out plan {options.plan.key[:8]} "
        f"({options.plan.agent_windows} agent-windows per policy planned)",
        "| policy | agent-windows | mean P&L | win rate | mean max drawdown | unparseable |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in ((result.base_policy, result.base), (version, result.candidate)):
        lines.append(
            f"| {name} | {m.agent_windows} | {m.mean_pnl:+,.2f} | {m.win_rate:.1%} | "
            f"{m.mean_max_drawdown:,.2f} | {m.unparseable_rate:.1%} |"
        )
    lines.append(
        f"Paired P&L difference (checkpoint - base) over {paired.pairs} pairs: {paired.mean:+,.2f}, "
        f"95% interval [{paired.low:+,.2f}, {paired.high:+,.2f}]; gate: {result.verdict.describe()}"
    )
    for name, plays in ((result.base_policy, base), (version, candidate)):
        trades = trades_executed(store, plays)
        if trades:
            lines.append(
                f"{name}: {sum(trades) / len(trades):.2f} trades executed per agent-window, "
                f"{sum(1 for t in trades if t) / len(trades):.1%} of agent-windows traded "
                f"({len(trades)} of its plays are in this store)"
            )
    text = "\n".join(lines)
    print(text)
    Path(settings.SERVING_FILE).parent.joinpath("study_result.json").write_text(
        json.dumps({"version": version, **result.as_json()}, indent=2, default=str)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
