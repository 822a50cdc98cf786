"""`TorchBackend`: ART's backend protocol on transformers + peft, on the CPU or one CUDA GPU (DESIGN 6).

ART's own backends need CUDA with unsloth and vLLM (`LocalBackend`) or W&B's hosted service
(`ServerlessBackend`). This one is driven the same way:

    backend = TorchBackend(TorchTrainerConfig(base_model="SmolLM2-135M-Instruct"))
    model = art.TrainableModel(name="babylon-mmo", project="babylon-agents", base_model="...")
    await model.register(backend)
    result = await backend.train(model, groups, learning_rate=5e-5)

Each `train` call is one optimizer step (accumulated over micro-batches) and one checkpoint in ART's
layout, `{path}/{project}/models/{name}/checkpoints/{step:04d}/`: the peft adapter, the optimizer, the
RNG states and the data position, so a new process resumes exactly where the last one stopped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from art.types import TrainResult

from babylon_assets.core.advantages import group_advantages
from babylon_assets.core.on_policy import PolicyVersions, base_version, chosen_tokens
from babylon_assets.training.art_trajectories import TOKEN_ID_PREFIX
from babylon_assets.training.grpo import (
    Autocast,
    Conversation,
    MisalignedTokensError,
    Sample,
    SampledTokens,
    StepConfig,
    StepStats,
    grpo_step,
    tokenize_conversation,
)

if TYPE_CHECKING:
    import art
    from art import dev
    from art.types import TrainSFTConfig

    from babylon_assets.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng_state.pt"
STATE_FILE = "trainer_state.json"
# ART's TrainSFTConfig defaults batch_size to "auto": this many trajectories a step on CPU-sized models.
SFT_AUTO_BATCH = 8


class CheckpointRegistry(Protocol):
    """Who knows which checkpoints are in use (the store's `trained_models` rows, by storagePath)."""

    def protected_checkpoints(self, paths: Sequence[str]) -> set[str]:
        """The paths among these whose model row is `ready` or `deployed` (never pruned)."""
        ...

    def archive_checkpoints(self, paths: Sequence[str]) -> int:
        """Mark the rows of these (about to be deleted) checkpoints `archived`; how many rows changed."""
        ...

    def owner(self) -> tuple[str, str]:
        """The store's id and a description of it (its URL without the password)."""
        ...

    def recorded_checkpoints(self, paths: Sequence[str]) -> set[str]:
        """The paths among these that the store recorded as checkpoints of its own."""
        ...


OWNER_FILE = "owner.json"
_BEHAVIOUR_ADAPTER = "behaviour-step-"


class CheckpointOwnerError(ValueError):
    """A model folder whose checkpoints another store's runs made: resuming from them would make lineage lie."""


@dataclass(frozen=True)
class TorchTrainerConfig:
    """Everything the torch backend needs besides the per-call options of `train`."""

    base_model: str
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    kl_coef: float = 0.0
    clip_epsilon: float = 0.2
    max_grad_norm: float | None = 1.0
    micro_batch_size: int = 4
    max_sequence_tokens: int = 2048
    weight_decay: float = 0.0
    keep_checkpoints: int = 3
    seed: int = 0
    device: str = "auto"  # auto: the CUDA GPU when there is one, else the CPU
    importance_weight_cap: float = 2.0
    mask_forced_tokens: bool = True
    share_prefix: bool = True  # forward a micro-batch's shared prompt prefix once (grpo.collate); the same gradient
    # The forwards' matrix products (TRAIN_PRECISION, whose default is auto): a config built by hand (the tests, the
    # benches' baselines) computes in float32 unless it says otherwise, so its numbers do not depend on the CPU.
    precision: Literal["auto", "float32", "bfloat16"] = "float32"

    @classmethod
    def from_settings(cls, settings: Settings) -> TorchTrainerConfig:
        """The trainer's part of the settings (DESIGN 7)."""
        return cls(
            base_model=settings.BASE_MODEL,
            lora_rank=settings.LORA_RANK,
            lora_alpha=settings.LORA_ALPHA,
            lora_dropout=settings.LORA_DROPOUT,
            target_modules=tuple(m.strip() for m in settings.LORA_TARGET_MODULES.split(",") if m.strip()),
            kl_coef=settings.KL_COEF,
            clip_epsilon=settings.CLIP_EPSILON,
            max_grad_norm=settings.MAX_GRAD_NORM,
            micro_batch_size=settings.MICRO_BATCH_SIZE,
            max_sequence_tokens=settings.MAX_SEQUENCE_TOKENS,
            keep_checkpoints=settings.KEEP_CHECKPOINTS,
            seed=settings.TRAIN_SEED,
            device=settings.TRAIN_DEVICE,
            importance_weight_cap=settings.IMPORTANCE_WEIGHT_CAP,
            mask_forced_tokens=settings.MASK_FORCED_TOKENS,
            precision=settings.TRAIN_PRECISION,
        )

    def resolved_autocast(self) -> Autocast:
        """The dtype the forwards' matrix products run in under autocast ("bfloat16"), or None for float32. auto:
        bf16 where the device computes it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), since
        elsewhere bf16 is emulated and slower than float32."""
        import torch

        if self.precision == "float32":
            return None
        if self.precision == "bfloat16":
            return "bfloat16"
        if self.resolved_device() == "cuda":
            # Pre-Ampere GPUs emulate bf16 (slower than float32): only a native one counts.
            return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else None
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return "bfloat16" if native else None

    def resolved_device(self) -> str:
        """cpu or cuda."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


@dataclass
class TorchTrainResult(TrainResult):
    """ART's TrainResult (step, metrics) plus where the checkpoint went and what the step learned from."""

    checkpoint_path: str | None = None
    objective: str = "none"
    groups_used: int = 0
    groups_skipped_zero_variance: int = 0


@dataclass
class _Session:
    """One registered model's live training state."""

    model: Any
    tokenizer: Any
    optimizer: Any
    step: int
    samples_seen: int = 0
    groups_seen: int = 0
    data_position: dict[str, Any] = field(default_factory=dict)


def _sampled_tokens(content: Sequence[Any], mask_forced: bool) -> SampledTokens | None:
    """The token ids a Choice's logprobs spell as `token_id:N`, or None when they are texts (re-tokenized play)."""
    if not content or not all(str(token.token).startswith(TOKEN_ID_PREFIX) for token in content):
        return None
    ids = tuple(int(str(token.token)[len(TOKEN_ID_PREFIX) :]) for token in content)
    pieces = [bytes(token.bytes or []).decode("utf-8", errors="replace") for token in content]
    trained = tuple(chosen_tokens(pieces)) if mask_forced else (True,) * len(ids)
    return SampledTokens(ids, tuple(float(token.logprob) for token in content), trained)


def conversations_of(
    trajectory: art.Trajectory, policy: PolicyVersions | None = None, mask_forced: bool = True
) -> list[Conversation]:
    """Every history of an ART trajectory as a Conversation, with the behaviour logprobs its Choices carry, or their
    sampled token ids (on-policy play: then the temperature and the step of the version that played, which
    `policy` reads from the trajectory's metadata)."""
    from openai.types.chat.chat_completion import Choice

    histories = [trajectory.messages_and_choices, *(h.messages_and_choices for h in trajectory.additional_histories)]
    metadata = trajectory.metadata or {}
    temperature = metadata.get("temperature")
    version = metadata.get("policy_version")
    behaviour_step = policy.step_of(version) if policy is not None and isinstance(version, str) else None
    conversations = []
    for history in histories:
        messages: list[dict[str, Any]] = []
        logprobs: dict[int, list[float]] = {}
        sampled: dict[int, SampledTokens] = {}
        for item in history:
            if isinstance(item, Choice):
                messages.append({"role": "assistant", "content": item.message.content or ""})
                content = item.logprobs.content if item.logprobs is not None else None
                tokens = _sampled_tokens(content or [], mask_forced)
                if tokens is not None:
                    sampled[len(messages) - 1] = tokens
                elif content:
                    logprobs[len(messages) - 1] = [float(token.logprob) for token in content]
            else:
                text = item.get("content")
                messages.append({"role": item["role"], "content": text if isinstance(text, str) else ""})
        if any(m["role"] == "assistant" for m in messages):
            conversations.append(
                Conversation(
                    messages,
                    logprobs,
                    sampled,
                    temperature=float(temperature) if isinstance(temperature, (int, float)) and sampled else 1.0,
                    behaviour_step=behaviour_step if sampled else None,
                )
            )
    return conversations


class TorchBackend:
    """ART's backend protocol on transformers + peft (CPU or one CUDA GPU)."""

    def __init__(
        self,
        config: TorchTrainerConfig,
        path: str = ".art",
        *,
        registry: CheckpointRegistry | None = None,
        inference_folder: Path | None = None,
    ) -> None:
        self.config = config
        self._path = str(path)
        self._registry = registry
        self._inference_folder = inference_folder
        self._sessions: dict[str, _Session] = {}
        self._lock = asyncio.Lock()
        self.misaligned_samples = 0  # on-policy answers left out because their token ids do not spell them

    # --- where things are -------------------------------------------------------------------------------

    def model_dir(self, model: art.Model) -> Path:
        """ART's model folder: {path}/{project}/models/{name}."""
        return Path(self._path) / model.project / "models" / model.name

    def checkpoint_dir(self, model: art.Model, step: int) -> Path:
        """ART's checkpoint folder of one step."""
        return self.model_dir(model) / "checkpoints" / f"{step:04d}"

    def checkpoint_steps(self, model: art.Model) -> list[int]:
        """The steps that have a complete checkpoint, oldest first."""
        folder = self.model_dir(model) / "checkpoints"
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and (p / STATE_FILE).is_file()
        )

    def _latest_step(self, model: art.Model) -> int:
        steps = self.checkpoint_steps(model)
        return steps[-1] if steps else 0

    # --- ART's protocol ---------------------------------------------------------------------------------

    def _model_inference_name(self, model: art.Model, step: int | None = None) -> str:
        """`{name}@{step}`: how the local server and the gateway name a checkpoint."""
        return f"{model.name}@{self._latest_step(model) if step is None else step}"

    async def close(self) -> None:
        """Free the models held in memory, and give the freed memory back to the system."""
        self._sessions.clear()
        _release_freed_memory()

    async def register(self, model: art.Model) -> None:
        """Give the model this backend's folder and write its model.json (as ART's LocalBackend does); the folder
        belongs to the registry's store, and one whose checkpoints another store made is refused."""
        model.base_path = self._path
        folder = self.model_dir(model)
        folder.mkdir(parents=True, exist_ok=True)
        self._claim(model)
        (folder / "model.json").write_text(json.dumps(model.model_dump(mode="json"), default=str))

    def _claim(self, model: art.Model) -> None:
        if self._registry is None:
            return
        store_id, described = self._registry.owner()
        marker = self.model_dir(model) / OWNER_FILE
        if marker.is_file():
            owner = json.loads(marker.read_text())
            if owner.get("store_id") != store_id:
                raise CheckpointOwnerError(
                    f"{self.model_dir(model)} holds the checkpoints of store {owner.get('store_id')} "
                    f"({owner.get('store')}); this run's store is {store_id} ({described}). Resuming from them would "
                    "record a lineage this store never trained: point ART_PATH at a folder of this store's."
                )
            return
        steps = self.checkpoint_steps(model)
        if steps:
            latest = str(self.checkpoint_dir(model, steps[-1]))
            if latest not in self._registry.recorded_checkpoints([latest]):
                raise CheckpointOwnerError(
                    f"{self.model_dir(model)} holds checkpoints (the newest {latest}) that this run's store {store_id} "
                    f"({described}) never recorded: point ART_PATH at a folder of this store's, or move them away."
                )
        _write_json_atomically(marker, {"store_id": store_id, "store": described})

    async def _get_step(self, model: art.TrainableModel) -> int:
        return self._latest_step(model)

    async def _delete_checkpoint_files(self, model: art.TrainableModel, steps_to_keep: list[int]) -> None:
        """Delete every checkpoint but these, except those a `ready` or `deployed` model row points at."""
        self._prune(model, keep=set(steps_to_keep))

    async def _prepare_backend_for_training(
        self, model: art.TrainableModel, config: dev.OpenAIServerConfig | None = None
    ) -> tuple[str, str]:
        """The local llama.cpp server's endpoint when one runs; otherwise none (training needs no server)."""
        from babylon_assets.llm.openai_compat import PLACEHOLDER_API_KEY

        if self._inference_folder is not None:
            from babylon_assets.llm.local_server import status

            running = status(self._inference_folder)
            if running is not None and running.healthy:
                return running.base_url, PLACEHOLDER_API_KEY
        log.info(
            "no local inference server runs; model.openai_client() is unavailable until one does (`babylon llm serve`)"
        )
        return None, None  # type: ignore[return-value]  # ART's model then says the client is unavailable

    async def train(
        self,
        model: art.TrainableModel,
        trajectory_groups: Iterable[art.TrajectoryGroup],
        *,
        learning_rate: float = 5e-5,
        kl_penalty_coef: float | None = None,
        epsilon: float | None = None,
        epsilon_high: float | None = None,
        scale_rewards: bool = True,
        normalize_advantages: bool = True,
        save_checkpoint: bool = True,
        data_position: dict[str, Any] | None = None,
        verbose: bool = False,
        **unsupported: Any,
    ) -> TorchTrainResult:
        """One GRPO step on these groups, then a checkpoint (ART's `backend.train`).

        Zero-variance groups carry no signal and are skipped (counted in the metrics). `data_position`
        is stored in the checkpoint so a caller that samples its data can resume its sampler too. ART's
        protocol takes a backend's options as keywords; one this backend does not know is refused, never ignored.
        """
        if unsupported:
            raise TypeError(f"the torch backend has no training option(s) {', '.join(sorted(unsupported))}")
        groups = list(trajectory_groups)
        step_config = StepConfig(
            clip_epsilon=self.config.clip_epsilon if epsilon is None else epsilon,
            clip_epsilon_high=epsilon_high,
            kl_coef=self.config.kl_coef if kl_penalty_coef is None else kl_penalty_coef,
            max_grad_norm=self.config.max_grad_norm,
            micro_batch_size=self.config.micro_batch_size,
            autocast=self.config.resolved_autocast(),
        )
        async with self._lock:
            return await asyncio.to_thread(
                self._train_sync,
                model,
                groups,
                step_config,
                learning_rate,
                scale_rewards and normalize_advantages,
                save_checkpoint,
                data_position or {},
            )

    async def _train_sft(
        self,
        model: art.TrainableModel,
        trajectories: Iterable[art.Trajectory],
        config: TrainSFTConfig,
        dev_config: dev.TrainSFTConfig,
        verbose: bool = False,
    ) -> AsyncIterator[dict[str, float]]:
        """Supervised fine-tuning: log-likelihood of the assistant tokens, one step (and checkpoint) per batch.

        ART's TrainSFTConfig: `batch_size` "auto" means SFT_AUTO_BATCH trajectories; `learning_rate` is one
        value or one per batch (a list shorter than the batches is an error, not a silent reuse).
        """
        trajectories = list(trajectories)
        batch_size = config.batch_size if isinstance(config.batch_size, int) else SFT_AUTO_BATCH
        if batch_size < 1:
            raise ValueError(f"SFT batch_size must be at least 1, got {batch_size}")
        batches = [trajectories[start : start + batch_size] for start in range(0, len(trajectories), batch_size)]
        rates = config.learning_rate
        if not isinstance(rates, list):
            rates = [rates] * len(batches)
        if len(rates) < len(batches):
            raise ValueError(f"{len(rates)} learning rates for {len(batches)} SFT batches")
        step_config = StepConfig(
            max_grad_norm=self.config.max_grad_norm,
            micro_batch_size=self.config.micro_batch_size,
            autocast=self.config.resolved_autocast(),
        )
        for chunk, learning_rate in zip(batches, rates, strict=False):
            async with self._lock:
                result = await asyncio.to_thread(self._sft_sync, model, chunk, step_config, float(learning_rate))
            yield {**result.metrics, "learning_rate": float(learning_rate)}

    # --- the work ---------------------------------------------------------------------------------------

    def session(self, model: art.Model) -> _Session:
        """The model's training state, loaded on first use: from its latest checkpoint, else fresh LoRA."""
        session = self._sessions.get(model.name)
        if session is None:
            session = self._load_session(model)
            self._sessions[model.name] = session
        return session

    def _load_session(self, model: art.Model) -> _Session:
        import torch
        from peft import LoraConfig, PeftModel, get_peft_model

        from babylon_assets.training.base_models import load_causal_lm, load_tokenizer, resolve_base_model

        device = self.config.resolved_device()
        folder = resolve_base_model(self.config.base_model)
        tokenizer = load_tokenizer(folder)
        base = load_causal_lm(folder, device)
        step = self._latest_step(model)
        torch.manual_seed(self.config.seed)
        random.seed(self.config.seed)
        if step > 0:
            checkpoint = self.checkpoint_dir(model, step)
            peft_model = PeftModel.from_pretrained(base, str(checkpoint), is_trainable=True)
        else:
            lora = LoraConfig(
                r=self.config.lora_rank,
                lora_alpha=self.config.lora_alpha,
                lora_dropout=self.config.lora_dropout,
                target_modules=list(self.config.target_modules),
                task_type="CAUSAL_LM",
                bias="none",
            )
            peft_model = get_peft_model(base, lora)
        optimizer = torch.optim.AdamW(
            [p for p in peft_model.parameters() if p.requires_grad], lr=5e-5, weight_decay=self.config.weight_decay
        )
        session = _Session(peft_model, tokenizer, optimizer, step)
        if step > 0:
            checkpoint = self.checkpoint_dir(model, step)
            optimizer.load_state_dict(torch.load(checkpoint / OPTIMIZER_FILE, map_location=device))
            rng = torch.load(checkpoint / RNG_FILE, weights_only=False)
            torch.set_rng_state(rng["torch"])
            if rng.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            random.setstate(rng["python"])
            state = json.loads((checkpoint / STATE_FILE).read_text())
            session.samples_seen = int(state["samples_seen"])
            session.groups_seen = int(state["groups_seen"])
            session.data_position = dict(state.get("data_position") or {})
        return session

    def training_state(self, model: art.Model) -> dict[str, Any]:
        """The latest checkpoint's trainer_state.json ({} before the first step)."""
        step = self._latest_step(model)
        if step == 0:
            return {}
        return dict(json.loads((self.checkpoint_dir(model, step) / STATE_FILE).read_text()))

    def samples_of(
        self,
        groups: Sequence[art.TrajectoryGroup],
        tokenizer: Any,
        scale_rewards: bool = True,
        policy: PolicyVersions | None = None,
    ) -> tuple[list[Sample], int, int]:
        """Samples of every decision conversation of every group with spread; (samples, used, skipped). Sampled
        tokens that do not spell their answer under this tokenizer are an error: they belong to another model."""
        samples: list[Sample] = []
        used = skipped = 0
        for group in groups:
            trajectories = [t for t in group.trajectories if not isinstance(t, BaseException)]
            advantages = group_advantages([t.reward for t in trajectories], scale=scale_rewards)
            if advantages is None:
                skipped += 1
                continue
            used += 1
            for trajectory, advantage in zip(trajectories, advantages, strict=True):
                for conversation in conversations_of(trajectory, policy, self.config.mask_forced_tokens):
                    try:
                        samples.append(
                            tokenize_conversation(tokenizer, conversation, advantage, self.config.max_sequence_tokens)
                        )
                    except MisalignedTokensError as error:
                        # One answer whose tokens are not its text fails itself, not the step: counted, not trained.
                        self.misaligned_samples += 1
                        log.warning("an on-policy sample was left out: %s", error)
        return samples, used, skipped

    def policy_versions(self, model: art.Model) -> PolicyVersions:
        """How this model's versions are named: `{name}@{step}`, its base as evaluation names it."""
        return PolicyVersions(model.name, base_version(self.config.base_model))

    def _train_sync(
        self,
        model: art.TrainableModel,
        groups: list[art.TrajectoryGroup],
        step_config: StepConfig,
        learning_rate: float,
        scale_rewards: bool,
        save_checkpoint: bool,
        data_position: dict[str, Any],
    ) -> TorchTrainResult:
        session = self.session(model)
        self.misaligned_samples = 0
        samples, used, skipped = self.samples_of(groups, session.tokenizer, scale_rewards, self.policy_versions(model))
        if not samples:
            # Nothing with a learning signal: no optimizer step, no new checkpoint, the step stays.
            log.warning("no group with spread among %d groups (%d without): nothing trained", len(groups), skipped)
            return TorchTrainResult(
                step=session.step,
                metrics={"groups_used": 0.0, "groups_skipped_zero_variance": float(skipped)},
                groups_skipped_zero_variance=skipped,
            )
        reference = session.model.disable_adapter if step_config.kl_coef > 0 else None
        stats = self._step(session, samples, step_config, learning_rate, reference, model)
        session.groups_seen += used + skipped
        session.data_position = data_position or session.data_position
        metrics = {
            **stats.as_metrics(),
            "groups_used": float(used),
            "groups_skipped_zero_variance": float(skipped),
            "learning_rate": learning_rate,
            "truncated_sequences": float(sum(s.truncated for s in samples)),
            "logprobs_aligned": float(sum(s.logprobs_aligned for s in samples)),
            "logprobs_misaligned": float(sum(s.logprobs_misaligned for s in samples)),
            "on_policy_sequences": float(sum(s.on_policy for s in samples)),
            "misaligned_samples_left_out": float(self.misaligned_samples),
            "reward_mean": _mean([t.reward for g in groups for t in g.trajectories]),
        }
        checkpoint = self._save(model, session, step_config, learning_rate) if save_checkpoint else None
        return TorchTrainResult(
            step=session.step,
            metrics=metrics,
            checkpoint_path=None if checkpoint is None else str(checkpoint),
            objective=stats.objective,
            groups_used=used,
            groups_skipped_zero_variance=skipped,
        )

    def _sft_sync(
        self,
        model: art.TrainableModel,
        trajectories: list[art.Trajectory],
        step_config: StepConfig,
        learning_rate: float,
    ) -> TorchTrainResult:
        session = self.session(model)
        samples = [
            tokenize_conversation(session.tokenizer, c, 1.0, self.config.max_sequence_tokens)
            for t in trajectories
            for c in conversations_of(t)
        ]
        stats = self._step(session, samples, step_config, learning_rate, None)
        checkpoint = self._save(model, session, step_config, learning_rate)
        return TorchTrainResult(
            step=session.step, metrics=stats.as_metrics(), checkpoint_path=str(checkpoint), objective="supervised"
        )

    def _step(
        self,
        session: _Session,
        samples: list[Sample],
        step_config: StepConfig,
        learning_rate: float,
        reference: Any,
        model: art.Model | None = None,
    ) -> StepStats:
        for group in session.optimizer.param_groups:
            group["lr"] = learning_rate
        step_config = StepConfig(
            **{
                **asdict(step_config),
                "pad_token_id": int(session.tokenizer.pad_token_id),
                "importance_weight_cap": self.config.importance_weight_cap,
                "share_prefix": self.config.share_prefix,
            }
        )
        behaviour = None if model is None else self._behaviour_policy(session, model)
        try:
            stats = grpo_step(
                session.model,
                session.optimizer,
                samples,
                step_config,
                reference,
                current_step=session.step,
                behaviour=behaviour,
            )
        finally:
            for name in [n for n in session.model.peft_config if n.startswith(_BEHAVIOUR_ADAPTER)]:
                session.model.delete_adapter(name)
        session.step += 1
        session.samples_seen += len(samples)
        return stats

    def _behaviour_policy(self, session: _Session, model: art.Model) -> Any:
        """Enters the policy of an earlier step, for pi_old of play that version made: the base with the adapter
        disabled (step 0), else that step's checkpoint loaded as a second, frozen adapter."""
        from contextlib import contextmanager

        @contextmanager
        def at_step(step: int) -> Any:
            if step == 0:
                with session.model.disable_adapter():
                    yield
                return
            name = f"{_BEHAVIOUR_ADAPTER}{step}"
            if name not in session.model.peft_config:
                folder = self.checkpoint_dir(model, step)
                if not (folder / "adapter_model.safetensors").is_file():
                    raise FileNotFoundError(
                        f"the checkpoint of step {step} ({folder}) is gone, so pi_old of its play cannot be computed: "
                        "keep KEEP_CHECKPOINTS above MAX_STEPS_OFF_POLICY"
                    )
                session.model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
            session.model.set_adapter(name)
            try:
                yield
            finally:
                session.model.set_adapter("default")

        return at_step

    def _save(self, model: art.Model, session: _Session, step_config: StepConfig, learning_rate: float) -> Path:
        """Write the checkpoint beside its final place and rename it in, then prune old ones."""
        import torch

        target = self.checkpoint_dir(model, session.step)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        session.model.save_pretrained(str(partial))
        torch.save(session.optimizer.state_dict(), partial / OPTIMIZER_FILE)
        torch.save(
            {
                "torch": torch.get_rng_state(),
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            partial / RNG_FILE,
        )
        state = {
            "step": session.step,
            "base_model": self.config.base_model,
            "model_version": f"{model.name}@{session.step}",
            "samples_seen": session.samples_seen,
            "groups_seen": session.groups_seen,
            "data_position": session.data_position,
            "learning_rate": learning_rate,
            "step_config": asdict(step_config),
            "trainer_config": {**asdict(self.config), "target_modules": list(self.config.target_modules)},
            "saved_at": time.time(),
        }
        (partial / STATE_FILE).write_text(json.dumps(state, indent=2, default=str))
        if target.exists():  # a step redone after a crash between save and prune: the new one wins
            shutil.rmtree(target)
        partial.rename(target)
        self._prune(model, keep=set(self.checkpoint_steps(model)[-max(self.config.keep_checkpoints, 1) :]))
        return target

    def _prune(self, model: art.Model, keep: set[int]) -> list[int]:
        """Delete checkpoints outside `keep` unless a ready/deployed row uses them; their rows become archived."""
        candidates = {
            step: str(self.checkpoint_dir(model, step).resolve())
            for step in self.checkpoint_steps(model)
            if step not in keep
        }
        if not candidates:
            return []
        protected = self._registry.protected_checkpoints(list(candidates.values())) if self._registry else set()
        doomed = {step: path for step, path in candidates.items() if path not in protected}
        if self._registry is not None and doomed:
            # Rows first: a row may point at a folder about to go, never at one already gone.
            self._registry.archive_checkpoints(list(doomed.values()))
        for path in doomed.values():
            shutil.rmtree(path, ignore_errors=True)
        return sorted(doomed)


def _release_freed_memory() -> None:
    """Collect the freed model, then hand the freed memory back (CUDA's cache; glibc's free heap pages): without it a
    process that trains again and again (the in-process loop) keeps every step's peak."""
    import contextlib
    import ctypes
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the allocator keeps what it keeps
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data))
    partial.replace(path)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def make_backend(
    settings: Settings, registry: CheckpointRegistry | None = None, inference_folder: Path | None = None
) -> art.Backend:
    """The backend TRAIN_BACKEND names. ART's own ones are imported only when chosen (they need CUDA,
    unsloth and vLLM, or a W&B key) and are not verified on this project's machines."""
    if settings.TRAIN_BACKEND == "torch":
        return TorchBackend(
            TorchTrainerConfig.from_settings(settings),
            path=settings.ART_PATH,
            registry=registry,
            inference_folder=inference_folder,
        )
    if settings.TRAIN_BACKEND == "art-local":
        from art.local import LocalBackend

        return LocalBackend(path=settings.ART_PATH)
    if settings.TRAIN_BACKEND == "serverless":
        from art.serverless import ServerlessBackend

        return ServerlessBackend()
    raise ValueError(f"TRAIN_BACKEND={settings.TRAIN_BACKEND!r}: expected torch, art-local or serverless")
