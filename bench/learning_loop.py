"""How fast the on-policy loop runs on this machine (issue 20, item 6), as ratios measured in one run.

    make llm-build                                  # once: llama-server
    .venv/bin/python bench/learning_loop.py [--seats 8] [--decisions 3] [--repeats 3] [--parts PARTS] [--json FILE]

Real SmolLM2-135M-Instruct on llama.cpp with `--parallel <seats>` slots, the decision schema as response_format:

1. throughput  one window (seats x decisions) played by the simulator's LLM agents straight to llama-server, then
               the same window through the gateway (recording into a SQLite store), greedy so both passes do the
               same work; alternated --repeats times. Goal: gateway / direct >= 0.9 (decisions per second).
2. prefix      the window's calls sent again straight to llama-server, one decision of every seat at a time, from
               cold slots, with the prompts laid out identity first (as prompt-v1 was), rules first (prompt-v2)
               and the identity after the market (prompt-v3): prompt tokens the server reused from its cache /
               prompt tokens sent; with a slot per seat, and with a quarter as many slots as seats.
3. cycle       two cycles of `babylon learn` (run_learning_cycles) on a fresh store: rollouts of one window, the
               window graph, one GRPO step on full prompts. The second cycle is the steady state (its rollouts
               export the first checkpoint's adapter and restart the server with it). Each phase's seconds and
               the peak RSS of this process and its children (llama-server included). Goal: a cycle under 180 s.
4. masking     one step from the base on the cycle's first hour, with the grammar-forced tokens masked from the
               loss and without (same seed, same samples): the step's trained tokens, loss and gradient norm.
5. sharing     one step from the base on the cycle's first hour with each micro-batch's shared prompt prefix
               forwarded once (the default) and with every row forwarded whole (same seed, same samples, float32):
               seconds, tokens forwarded, peak RSS, and the largest difference between the two updated adapters.
   precision   the same step with the forwards in float32 and in bf16 under autocast (TRAIN_PRECISION): seconds,
               loss, gradient norm, peak RSS and the largest difference between the two updated adapters.
6. sensors     the same loop driven by the sensors under `dagster-daemon` (runs launched in their own processes):
               from the daemon's start until the new checkpoint has played its first rollout hour.

On 2 shared cores the absolute numbers move with whatever else runs; the ratios are taken within this run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("PYTHON_DOTENV_DISABLED", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from babylon_assets.core.agent_protocol import (  # noqa: E402
    RESPONSE_FORMAT,
    RULES,
    Observation,
    account_lines,
    agent_identity,
    market_lines,
    observation_prompt,
    system_prompt,
)
from babylon_assets.core.decision_schema import max_answer_tokens, response_format  # noqa: E402
from babylon_assets.core.window_play import AgentReply  # noqa: E402
from babylon_assets.db.store import Store  # noqa: E402
from babylon_assets.gateway.app import Upstream  # noqa: E402
from babylon_assets.gateway.server import free_port, gateway_in_thread  # noqa: E402
from babylon_assets.llm import local_server  # noqa: E402
from babylon_assets.llm.agent import LlmAgent, LlmEndpoint  # noqa: E402
from babylon_assets.play.rollouts import SLOT_CONTEXT_TOKENS  # noqa: E402
from babylon_assets.play.simulator import SimulationPlan, build_agents, simulate  # noqa: E402
from bench.measure import PeakRss  # noqa: E402

WINDOW = datetime(2025, 6, 2, 10, tzinfo=UTC)
SEED = 4242


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


class CapturingAgent(LlmAgent):
    """An LLM agent that keeps every prompt it sent, so the prefix measurement replays the window's own calls."""

    def __init__(self, *args, sent: list[tuple[str, str, str, Observation]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent = sent

    def respond(self, system: str, user: str, observation: Observation) -> AgentReply:
        self.sent.append((self.agent_id, self.archetype, user, observation))
        return super().respond(system, user, observation)


def fresh_store(folder: Path) -> Store:
    from babylon_assets.settings import Settings

    store = Store.from_settings(Settings(DATABASE_URL=f"sqlite:///{folder / 'store.db'}"))
    store.upgrade()
    return store


def play_window(store: Store, endpoint: LlmEndpoint, seats: int, decisions: int, sent=None) -> tuple[float, int, list]:
    """Play the bench's window; its seconds, decisions made and the answers in order."""
    plan = SimulationPlan(
        agents=seats, windows=1, duration_minutes=decisions, seed=SEED, start=WINDOW, llm=endpoint, concurrency=seats
    )
    agents = [
        CapturingAgent(agent.agent_id, agent.archetype, endpoint, sent=sent if sent is not None else [])
        for agent in build_agents(plan)
    ]
    started = time.perf_counter()
    summary = simulate(store, plan, now=WINDOW + timedelta(days=1), agents=list(agents))
    seconds = time.perf_counter() - started
    (window,) = summary.windows
    answers = [d.reply.text for play in window.plays for d in play.decisions]
    return seconds, len(answers), answers


def throughput(server: local_server.ServerState, seats: int, decisions: int, repeats: int, work: Path) -> dict:
    direct_endpoint = LlmEndpoint(
        "openai/smollm2", server.base_url, temperature=0.0, max_tokens=64, timeout_s=600, retries=0, structured=True
    )
    # A first, unmeasured pass loads the model's pages and fills the slots; it also keeps the window's prompts.
    sent: list = []
    play_window(fresh_store(Path(tempfile.mkdtemp(dir=work))), direct_endpoint, seats, decisions, sent)
    direct, gateway, same = [], [], []
    for repeat in range(repeats):
        seconds, made, direct_answers = play_window(
            fresh_store(Path(tempfile.mkdtemp(dir=work))), direct_endpoint, seats, decisions
        )
        direct.append(made / seconds)
        log(f"  direct  #{repeat + 1}: {made} decisions in {seconds:.1f} s")
        store = fresh_store(Path(tempfile.mkdtemp(dir=work)))
        upstream = Upstream(model="openai/smollm2", api_base=server.base_url, version="smollm2")
        with gateway_in_thread(store, upstream) as (url, recorder, api_key):
            endpoint = LlmEndpoint(
                "openai/policy",
                url,
                api_key=api_key,
                temperature=0.0,
                max_tokens=64,
                timeout_s=600,
                retries=0,
                via_gateway=True,
                structured=True,
            )
            seconds, made, gateway_answers = play_window(store, endpoint, seats, decisions)
            recorder.drain_from_thread(timeout_s=120.0)
        gateway.append(made / seconds)
        same.append(sum(a == b for a, b in zip(direct_answers, gateway_answers, strict=True)) / made)
        log(f"  gateway #{repeat + 1}: {made} decisions in {seconds:.1f} s")
    return {
        "direct_decisions_per_s": round(statistics.median(direct), 3),
        "gateway_decisions_per_s": round(statistics.median(gateway), 3),
        "gateway_over_direct": round(statistics.median(gateway) / statistics.median(direct), 3),
        "answers_identical_share": round(min(same), 3),
        "_sent": sent,
    }


LAYOUTS = ("identity first (prompt-v1)", "rules first (prompt-v2)", "identity after the market (prompt-v3)")


def _prompts(layout: str, agent: str, archetype: str, observation: Observation) -> tuple[str, str]:
    """The system and user prompts of one call under a layout of the prompt's versions."""
    identity = agent_identity(agent, archetype)
    market, account = "\n".join(market_lines(observation)), "\n".join(account_lines(observation))
    if layout == LAYOUTS[0]:
        return f"{identity}\n{RULES}\n{RESPONSE_FORMAT}", f"{market}\n{account}"
    if layout == LAYOUTS[1]:
        return f"{RULES}\n{RESPONSE_FORMAT}\n{identity}", f"{market}\n{account}"
    return system_prompt(), observation_prompt(observation, agent, archetype)


def _timings_of_call(client: httpx.Client, base_url: str, layout: str, item: tuple) -> dict:
    """One of the window's calls, sent straight to llama-server with the layout's system prompt: its timings."""
    agent, archetype, _, observation = item
    schema = response_format(observation)
    system, user = _prompts(layout, agent, archetype, observation)
    body = {
        "model": "smollm2",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "temperature": 0.0,
        "max_tokens": max(64, max_answer_tokens(schema["json_schema"]["schema"])),
        "response_format": schema,
    }
    answer = client.post(f"{base_url}/chat/completions", json=body)
    answer.raise_for_status()
    return answer.json()["timings"]


def prefix_cache(server_args: dict, sent: list, seats: int, work: Path) -> dict:
    """Cached / sent prompt tokens for the same calls under both layouts, each from a freshly started server: with a
    slot per seat (each seat's calls can land on its own slot) and with a quarter as many slots as seats (a slot
    serves other seats in turn, as when a game's agents outnumber the server's slots)."""
    rounds = [sent[i : i + seats] for i in range(0, len(sent), seats)]
    results: dict = {}
    for slots in (seats, max(1, seats // 4)):
        for layout in LAYOUTS:
            server = local_server.restart(work / "server", **{**server_args, "parallel": slots})
            cached = processed = 0
            started = time.perf_counter()
            with httpx.Client(timeout=600) as client, ThreadPoolExecutor(seats) as pool:
                call = functools.partial(_timings_of_call, client, server.base_url, layout)
                for one_round in rounds:
                    for timings in pool.map(call, one_round):
                        cached += int(timings.get("cache_n", 0))
                        processed += int(timings["prompt_n"])
            seconds = time.perf_counter() - started
            results[f"{slots} slots, {layout}"] = {
                # The same calls as bare HTTP requests (no agent, no litellm): the engine's own pace, from cold slots.
                "bare_decisions_per_s": round(len(sent) / seconds, 3),
                "prompt_tokens_sent": cached + processed,
                "cached": cached,
                "cached_over_sent": round(cached / (cached + processed), 3),
            }
            log(f"  {slots} slots, {layout}: {cached} of {cached + processed} prompt tokens cached")
    return results


def loop_settings(folder: Path, seats: int, decisions: int, **extra):
    from babylon_assets.settings import Settings

    values = {
        "DATABASE_URL": f"sqlite:///{folder / 'store.db'}",
        "DAGSTER_HOME": str(folder / "dagster"),
        "ART_PATH": str(folder / ".art"),
        "WANDB_DIR": str(folder / "wandb"),
        "ROLLOUT_SERVER_FOLDER": str(folder / "rollout-server"),
        "ROLLOUT_SERVER_PORT": free_port(),
        "MODEL_NAME": "bench-loop",
        "ON_POLICY": True,
        "ITERATIONS": 1,
        "WINDOWS_PER_ITERATION": 1,
        "NEW_WINDOWS_BEFORE_RETRAIN": 1,
        "MIN_READY_WINDOWS": 1,
        "MIN_ACTIONS": decisions,
        "ROLLOUT_START": "2025-03-01T00:00",
        "ROLLOUT_AGENTS": seats,
        "ROLLOUT_DECISIONS": decisions,
        "ROLLOUT_PARALLEL": seats,
        "WANDB_MODE": "offline",
    }
    return Settings(**{**values, **extra})


def cycle(seats: int, decisions: int, work: Path) -> dict:
    from dagster import DagsterInstance

    from babylon_assets.definitions import build_definitions
    from babylon_assets.orchestration.instance import prepare_dagster_home
    from babylon_assets.orchestration.learning import run_learning_cycles

    folder = work / "cycle"
    folder.mkdir()
    settings = loop_settings(folder, seats, decisions)
    os.environ["DAGSTER_HOME"] = settings.DAGSTER_HOME
    prepare_dagster_home(settings)
    store = Store.from_settings(settings)
    store.upgrade()
    defs = build_definitions(settings)
    rss = PeakRss()
    with rss.running(), DagsterInstance.get() as instance:

        def on_phase(number: int, phase: str) -> None:
            rss.phase = f"cycle {number} {phase}"
            log(f"  cycle {number}: {phase}")

        reports = run_learning_cycles(defs, instance, store, settings, 2, 1, on_phase=on_phase)
    out = {}
    for report in reports:
        phases = {
            phase: {
                "seconds": round(seconds, 1),
                "peak_rss_gb": round(rss.peaks.get(f"cycle {report.cycle} {phase}", 0), 2),
            }
            for phase, seconds in report.seconds.items()
        }
        out[f"cycle {report.cycle}"] = {
            "phases": phases,
            "seconds": round(sum(report.seconds.values()), 1),
            "samples_trained": report.metrics.get("sequences"),
            "engine_kl": report.metrics.get("engine_kl"),
        }
    from babylon_assets.training.torch_backend import TorchTrainerConfig

    out["training precision"] = TorchTrainerConfig.from_settings(settings).resolved_autocast() or "float32"
    return out


def _step_from_base(work: Path, seats: int, decisions: int, variant: str, rss: PeakRss | None = None, **changes):
    """One GRPO step from the base on the cycle's store (its first rollout hour is the base's own play), as a model of
    its own (`variant`: its name and ART folder); `changes` are settings, or the trainer's config fields. The step."""
    from dataclasses import fields, replace

    from babylon_assets.resources.trainer import TrainerResource
    from babylon_assets.training.run import run_training
    from babylon_assets.training.torch_backend import TorchTrainerConfig

    config_fields = {f.name for f in fields(TorchTrainerConfig)}
    settings = loop_settings(
        work / "cycle",
        seats,
        decisions,
        ART_PATH=str(work / f"art-{variant}"),
        MODEL_NAME=variant,
        **{k: v for k, v in changes.items() if k not in config_fields},
    )
    store = Store.from_settings(settings)
    trainer = TrainerResource.from_settings(settings.model_copy(update={"WANDB_MODE": "disabled"}))
    backend = trainer.backend(store)
    backend.config = replace(backend.config, **{k: v for k, v in changes.items() if k in config_fields})
    try:
        if rss is None:
            return run_training(store, backend, trainer.options()).steps[-1]
        rss.phase = variant
        with rss.running():
            return run_training(store, backend, trainer.options()).steps[-1]
    finally:
        store.dispose()


def masking(seats: int, decisions: int, work: Path) -> dict:
    """One GRPO step from the base with the tokens the grammar forced masked from the loss (MASK_FORCED_TOKENS, the
    default) and once without, with the same seed and samples, in float32: what masking changes in the step."""
    out = {}
    for masked in (True, False):
        label = "masked" if masked else "not masked"
        metrics = _step_from_base(
            work, seats, decisions, f"mask-{'on' if masked else 'off'}", MASK_FORCED_TOKENS=masked, precision="float32"
        ).metrics
        wanted = ("sequences", "trained_tokens", "forced_tokens_masked", "loss", "policy_loss", "grad_norm")
        out[label] = {name: round(float(metrics[name]), 5) for name in (*wanted, "clipped_fraction") if name in metrics}
        log(f"  {label}: {out[label]}")
    return out


def _compare_steps(seats: int, decisions: int, work: Path, variants: dict[str, tuple[str, dict]]) -> dict:
    """One GRPO step from the base per variant (label: (model name, changes)), same seed and samples: each step's
    seconds, the tokens it forwarded, its loss, gradient norm and peak RSS, and how far apart the updated adapters are
    (the largest absolute difference of any adapter weight between the first variant and each other)."""
    from safetensors.torch import load_file

    out: dict = {}
    adapters = {}
    for label, (variant, changes) in variants.items():
        rss = PeakRss()
        step = _step_from_base(work, seats, decisions, variant, rss, **changes)
        metrics = step.metrics
        out[label] = {
            "step_seconds": round(float(metrics["seconds"]), 1),
            "total_tokens": int(metrics["total_tokens"]),
            "forwarded_tokens": int(metrics["forwarded_tokens"]),
            "sequences": int(metrics["sequences"]),
            "loss": round(float(metrics["loss"]), 6),
            "grad_norm": round(float(metrics["grad_norm"]), 6),
            "peak_rss_gb": rss.peak(variant),
        }
        adapters[label] = load_file(str(Path(str(step.checkpoint_path)) / "adapter_model.safetensors"))
        log(f"  {label}: {out[label]}")
    first, *others = variants
    for other in others:
        out[f"{other} / {first}: step seconds"] = round(out[other]["step_seconds"] / out[first]["step_seconds"], 3)
        out[f"{other} / {first}: forwarded tokens"] = round(
            out[other]["forwarded_tokens"] / out[first]["forwarded_tokens"], 3
        )
        out[f"{other} vs {first}: adapter max abs difference"] = max(
            float((adapters[other][name] - adapters[first][name]).abs().max()) for name in adapters[first]
        )
    return out


def sharing(seats: int, decisions: int, work: Path) -> dict:
    """One GRPO step from the base with each micro-batch's shared prompt prefix forwarded once (the default) and with
    every row forwarded whole, in float32 (where the two are the same sums, but for order)."""
    return _compare_steps(
        seats,
        decisions,
        work,
        {
            "every row whole": ("share-off", {"share_prefix": False, "precision": "float32"}),
            "shared prefix once": ("share-on", {"share_prefix": True, "precision": "float32"}),
        },
    )


def precision(seats: int, decisions: int, work: Path) -> dict:
    """One GRPO step from the base with the forwards in float32 and in bf16 under autocast (TRAIN_PRECISION), the
    shared prefix forwarded once in both: what bf16 saves, and how far it moves the update."""
    return _compare_steps(
        seats,
        decisions,
        work,
        {
            "float32": ("precision-float32", {"precision": "float32"}),
            "bfloat16 autocast": ("precision-bfloat16", {"precision": "bfloat16"}),
        },
    )


def sensor_loop(seats: int, decisions: int, work: Path, timeout_s: float) -> dict:
    """The loop under dagster-daemon: its sensors, run queue and runs in their own processes, as under `make ui`."""
    from babylon_assets.orchestration.instance import prepare_dagster_home
    from babylon_assets.play.rollouts import RolloutPlan, rollout_versions

    folder = work / "sensors"
    folder.mkdir()
    # The rollout sensor only plays hours inside the lookback: start the rollout hours a few hours back.
    start = (datetime.now(UTC) - timedelta(hours=6)).replace(minute=0, second=0, microsecond=0)
    settings = loop_settings(folder, seats, decisions, ROLLOUT_START=start.strftime("%Y-%m-%dT%H:%M"))
    prepare_dagster_home(settings)
    store = Store.from_settings(settings)
    store.upgrade()
    env = {**os.environ, **{k: str(v) for k, v in settings.model_dump().items() if v is not None and k.isupper()}}
    env["DAGSTER_HOME"] = settings.DAGSTER_HOME
    started = time.perf_counter()
    log_file = (folder / "dagster-dev.log").open("wb")
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster",
            "dev",
            "--workspace",
            str(ROOT / "workspace.yaml"),
            "--port",
            str(free_port()),
        ],
        cwd=ROOT,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the webserver, daemon, code server, runs and servers
    )
    plan = RolloutPlan.from_settings(settings)
    marks: dict[str, float] = {}
    try:
        while time.perf_counter() - started < timeout_s:
            versions = rollout_versions(store, plan, 3)
            played = [version for version in versions.values() if version]
            if played and "first rollout hour played" not in marks:
                marks["first rollout hour played"] = time.perf_counter() - started
            if any(version.startswith("bench-loop@") for version in played):
                marks["the new checkpoint's first hour played"] = time.perf_counter() - started
                break
            time.sleep(2)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        log_file.close()
        local_server.stop(Path(settings.ROLLOUT_SERVER_FOLDER))
    return {name: round(seconds, 1) for name, seconds in marks.items()} | {"timed_out": len(marks) < 2}


PARTS = ("throughput", "cycle", "masking", "sharing", "precision", "sensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seats", type=int, default=8)
    parser.add_argument("--decisions", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"which to run, of {','.join(PARTS)} (throughput includes the prefix)"
    )
    parser.add_argument("--sensor-timeout", type=float, default=1800.0)
    parser.add_argument("--json", type=Path, help="also write the results here, after each part")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if parts - set(PARTS) or (parts & {"masking", "sharing", "precision"} and "cycle" not in parts):
        parser.error(
            f"--parts: some of {','.join(PARTS)} (masking, sharing and precision train on the cycle's store: "
            "give cycle)"
        )
    results: dict = {"seats": args.seats, "decisions": args.decisions, "cores": os.cpu_count()}

    def landed(part: str, value: object) -> None:
        # Each part is written as it lands: a later part that fails keeps the earlier ones.
        results[part] = value
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="babylon-loop-bench-") as scratch:
        work = Path(scratch)
        server_args = {"port": free_port(), "context": SLOT_CONTEXT_TOKENS, "parallel": args.seats}
        if "throughput" in parts:
            try:
                log("throughput: direct vs through the gateway")
                server = local_server.restart(work / "server", **server_args)
                measured = throughput(server, args.seats, args.decisions, args.repeats, work)
                sent = measured.pop("_sent")
                landed("throughput", measured)
                log("prefix cache: identity first vs rules first")
                landed("prefix_cache", prefix_cache(server_args, sent, args.seats, work))
            finally:
                local_server.stop(work / "server")
        if "cycle" in parts:
            log("one cycle, per phase")
            landed("cycle", cycle(args.seats, args.decisions, work))
        if "masking" in parts:
            log("forced tokens masked from the loss, and not")
            landed("masking", masking(args.seats, args.decisions, work))
        if "sharing" in parts:
            log("the shared prompt prefix forwarded once, and every row whole")
            landed("sharing", sharing(args.seats, args.decisions, work))
        if "precision" in parts:
            log("the training forwards in float32, and in bf16 under autocast")
            landed("precision", precision(args.seats, args.decisions, work))
        if "sensors" in parts:
            log("the sensor-driven loop under dagster dev")
            landed("sensors", sensor_loop(args.seats, args.decisions, work, args.sensor_timeout))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
