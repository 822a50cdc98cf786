"""The torch backend driven through ART's protocol, on the tiny model (and one real SmolLM2 step)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime
from pathlib import Path

import art
import pytest
import torch
from art.types import TrainResult
from openai.types.chat.chat_completion import Choice, ChoiceLogprobs
from openai.types.chat.chat_completion_message import ChatCompletionMessage
from openai.types.chat.chat_completion_token_logprob import ChatCompletionTokenLogprob
from sqlalchemy import insert, select

from babylon_assets.db.checkpoint_records import CheckpointRecords
from babylon_assets.db.schema import TrainedModel, table_of
from babylon_assets.settings import Settings
from babylon_assets.training.grpo import Conversation, sequence_logprob, tokenize_conversation
from babylon_assets.training.torch_backend import TorchBackend, TorchTrainerConfig, make_backend
from tests.training.conftest import PROMPT, RESPONSES, SYSTEM, decision, group_of

LR = 5e-3  # the tiny random model needs a large step to move within a few steps


def run(coroutine):
    return asyncio.run(coroutine)


def backend_at(folder: Path, base_model: Path, registry=None, **config) -> TorchBackend:
    return TorchBackend(
        TorchTrainerConfig(base_model=str(base_model), **{"micro_batch_size": 2, **config}),
        path=str(folder / ".art"),
        registry=registry,
    )


async def registered(backend: TorchBackend, base_model: Path, name: str = "babylon-mmo") -> art.TrainableModel:
    model = art.TrainableModel(name=name, project="babylon-agents", base_model=str(base_model))
    await model.register(backend)
    return model


def adapter_weights(backend: TorchBackend, model) -> dict[str, torch.Tensor]:
    peft_model = backend.session(model).model
    return {k: v.detach().clone() for k, v in peft_model.named_parameters() if v.requires_grad}


def test_art_trainable_model_drives_the_backend(tmp_path, tiny_model):
    backend = backend_at(tmp_path, tiny_model)

    async def scenario():
        model = await registered(backend, tiny_model)
        assert model.inference_model_name == "babylon-mmo@0" and await model.get_step() == 0
        result = await backend.train(model, [group_of([1.0, 0.0, 0.0, 0.0])], learning_rate=LR)
        return model, result, await model.get_step()

    model, result, step = run(scenario())
    assert isinstance(result, TrainResult) and result.step == step == 1
    assert result.objective == "advantage_weighted_likelihood" and result.groups_used == 1
    folder = tmp_path / ".art" / "babylon-agents" / "models" / "babylon-mmo"
    checkpoint = folder / "checkpoints" / "0001"
    assert result.checkpoint_path == str(checkpoint)
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.pt",
        "rng_state.pt",
        "trainer_state.json",
    ):
        assert (checkpoint / name).is_file(), name
    assert json.loads((folder / "model.json").read_text())["name"] == "babylon-mmo"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["model_version"] == "babylon-mmo@1" and state["samples_seen"] == 4
    assert backend._model_inference_name(model) == "babylon-mmo@1"
    assert result.metrics["loss"] == pytest.approx(result.metrics["policy_loss"])
    assert result.metrics["trained_tokens"] > 0 and result.metrics["tokens_per_second"] > 0


def test_zero_variance_groups_are_skipped_and_counted(tmp_path, tiny_model):
    backend = backend_at(tmp_path, tiny_model)

    async def scenario():
        model = await registered(backend, tiny_model)
        mixed = await backend.train(model, [group_of([0.5] * 4), group_of([1.0, 0.0, 0.0, 0.0])], learning_rate=LR)
        flat = await backend.train(model, [group_of([0.2] * 4)], learning_rate=LR)
        return mixed, flat, await model.get_step()

    mixed, flat, step = run(scenario())
    assert (mixed.groups_used, mixed.groups_skipped_zero_variance) == (1, 1)
    assert mixed.metrics["sequences"] == 4  # only the group with spread
    # Nothing with a signal: no optimizer step and no checkpoint, the step stays where it was.
    assert flat.groups_skipped_zero_variance == 1 and flat.checkpoint_path is None
    assert flat.step == step == 1


def test_the_rewarded_response_becomes_more_likely(tmp_path, tiny_model, tiny_tokenizer):
    backend = backend_at(tmp_path, tiny_model)
    samples = [tokenize_conversation(tiny_tokenizer, Conversation(decision(r)), 0.0) for r in RESPONSES]

    async def scenario():
        model = await registered(backend, tiny_model)
        peft_model = backend.session(model).model
        before = [sequence_logprob(peft_model, s) for s in samples]
        for _ in range(8):
            await backend.train(model, [group_of([1.0, 0.0, 0.0, 0.0])], learning_rate=LR)
        after = [sequence_logprob(peft_model, s) for s in samples]
        return before, after

    before, after = run(scenario())
    gains = [a - b for a, b in zip(after, before, strict=True)]
    assert gains[0] > 1.0
    # Each other response gains less (the "sell" one shares all but one token with the rewarded "buy", so
    # it gains too), and the rewarded response's share of the group's probability rises.
    assert all(gains[0] > g for g in gains[1:])
    log_share = [v[0] - torch.logsumexp(torch.tensor(v), 0).item() for v in (before, after)]
    assert log_share[1] > log_share[0]


def test_a_resumed_run_continues_exactly(tmp_path, tiny_model):
    groups = [[group_of([1.0, 0.0, 0.5, 0.0])], [group_of([0.0, 1.0, 0.0, 0.2])], [group_of([0.0, 0.0, 1.0, 0.3])]]

    async def straight():
        backend = backend_at(tmp_path / "straight", tiny_model, lora_dropout=0.1)
        model = await registered(backend, tiny_model)
        for batch in groups:
            await backend.train(model, batch, learning_rate=LR)
        return adapter_weights(backend, model)

    async def interrupted():
        first = backend_at(tmp_path / "resumed", tiny_model, lora_dropout=0.1)
        model = await registered(first, tiny_model)
        await first.train(model, groups[0], learning_rate=LR, data_position={"iteration": 1})
        await first.close()
        # A new backend (as a new process would build): adapter, optimizer, RNG and position from disk.
        second = backend_at(tmp_path / "resumed", tiny_model, lora_dropout=0.1)
        model = await registered(second, tiny_model)
        assert await model.get_step() == 1
        assert second.training_state(model)["data_position"] == {"iteration": 1}
        for batch in groups[1:]:
            await second.train(model, batch, learning_rate=LR)
        return adapter_weights(second, model)

    expected, resumed = run(straight()), run(interrupted())
    assert expected.keys() == resumed.keys() and expected
    for name, tensor in expected.items():
        assert torch.equal(tensor, resumed[name]), name


def test_supervised_warm_start_through_arts_train_sft(tmp_path, tiny_model, tiny_tokenizer):
    """ART's `model.train_sft` with its default config ("auto" batch) and with one learning rate per batch."""
    from art.types import TrainSFTConfig

    backend = backend_at(tmp_path, tiny_model)
    target = tokenize_conversation(tiny_tokenizer, Conversation(decision(RESPONSES[0])), 0.0)
    examples = [
        art.Trajectory(messages_and_choices=decision(RESPONSES[0]), reward=0.0)  # type: ignore[arg-type]
        for _ in range(12)
    ]

    async def scenario():
        model = await registered(backend, tiny_model)
        peft_model = backend.session(model).model
        before = sequence_logprob(peft_model, target)
        await model.train_sft(examples[:9])  # "auto": batches of 8 and 1 -> two steps
        after_default = await model.get_step()
        await model.train_sft(examples, TrainSFTConfig(batch_size=6, learning_rate=[LR, LR]))
        with pytest.raises(ValueError, match="2 learning rates for 3 SFT batches"):
            await model.train_sft(examples[:3] * 6, TrainSFTConfig(batch_size=6, learning_rate=[LR, LR]))
        return before, sequence_logprob(peft_model, target), after_default, await model.get_step()

    before, after, after_default, step = run(scenario())
    assert after_default == 2 and step == 4  # one checkpoint per batch; the refused call trained nothing
    assert after - before > 1.0  # the imitated response became far more likely
    checkpoint = tmp_path / ".art" / "babylon-agents" / "models" / "babylon-mmo" / "checkpoints" / "0004"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["learning_rate"] == LR


def test_kl_penalty_against_the_base_with_the_adapter_disabled(tmp_path, tiny_model):
    backend = backend_at(tmp_path, tiny_model, kl_coef=0.5)

    async def scenario():
        model = await registered(backend, tiny_model)
        first = await backend.train(model, [group_of([1.0, 0.0, 0.0, 0.0])], learning_rate=LR)
        second = await backend.train(model, [group_of([1.0, 0.0, 0.0, 0.0])], learning_rate=LR)
        return first, second

    first, second = run(scenario())
    assert first.metrics["kl"] == pytest.approx(0.0, abs=1e-7)  # LoRA starts as the identity
    assert second.metrics["kl"] > 0
    assert second.metrics["loss"] > second.metrics["policy_loss"]


def _choice_with_logprobs(tokenizer, text: str, logprob: float) -> Choice:
    tokens = [tokenizer.decode([t]) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    return Choice(
        finish_reason="stop",
        index=0,
        message=ChatCompletionMessage(role="assistant", content=text),
        logprobs=ChoiceLogprobs(
            content=[ChatCompletionTokenLogprob(token=t, logprob=logprob, top_logprobs=[]) for t in tokens]
        ),
    )


def test_recorded_logprobs_switch_to_clipped_importance_ratios(tmp_path, tiny_model, tiny_tokenizer):
    backend = backend_at(tmp_path, tiny_model)
    trajectories = [
        art.Trajectory(
            messages_and_choices=[
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": PROMPT},
                _choice_with_logprobs(tiny_tokenizer, r, -11.0),
            ],
            reward=w,
        )
        for r, w in zip(RESPONSES, (1.0, 0.0, 0.0, 0.0), strict=True)
    ]

    async def scenario():
        model = await registered(backend, tiny_model)
        return await backend.train(model, [art.TrajectoryGroup(trajectories)], learning_rate=LR)

    result = run(scenario())
    assert result.objective == "importance_ratio_clipped"
    assert result.metrics["messages_with_behaviour_logprobs"] == 4
    assert result.metrics["logprobs_aligned"] == 4
    # The random model's logprobs sit near log(1/49152) = -10.8: ratios near 1, some clipped, none absurd.
    assert 0.1 < result.metrics["mean_ratio"] < 10


def test_retention_keeps_the_latest_and_every_served_checkpoint(tmp_path, tiny_model, store):
    records = CheckpointRecords(store)
    backend = backend_at(tmp_path, tiny_model, registry=records, keep_checkpoints=2)
    models = table_of(TrainedModel)

    async def scenario():
        model = await registered(backend, tiny_model)
        for step in range(1, 5):
            result = await backend.train(model, [group_of([1.0, 0.0, 0.0, 0.0])], learning_rate=LR)
            status = "deployed" if step == 1 else "trained"
            with store.engine.begin() as connection:
                connection.execute(
                    insert(models).values(
                        id=uuid.uuid4().hex,
                        modelId=f"babylon-mmo@{step}",
                        version=f"babylon-mmo@{step}",
                        baseModel=str(tiny_model),
                        status=status,
                        storagePath=str(Path(result.checkpoint_path).resolve()),
                        updatedAt=datetime(2025, 1, 15),
                    )
                )
        return model

    model = run(scenario())
    assert backend.checkpoint_steps(model) == [1, 3, 4]  # 1 is deployed; 3 and 4 are the latest two
    with store.engine.connect() as connection:
        rows = dict(connection.execute(select(models.c.version, models.c.status)).all())
    # Step 2 was pruned when step 4 was saved; its row says so instead of pointing at nothing.
    assert rows == {
        "babylon-mmo@1": "deployed",
        "babylon-mmo@2": "archived",
        "babylon-mmo@3": "trained",
        "babylon-mmo@4": "trained",
    }


def test_train_backend_setting_chooses_the_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("ART_PATH", str(tmp_path / ".art"))
    backend = make_backend(Settings())
    assert isinstance(backend, TorchBackend) and backend.config.lora_rank == 8
    monkeypatch.setenv("TRAIN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="TRAIN_BACKEND"):
        Settings()


def test_one_real_step_on_smollm2(tmp_path):
    """SmolLM2-135M-Instruct, converted from the bundled GGUF (cached), one GRPO step with short sequences."""
    from babylon_assets.training.base_models import resolve_base_model

    base = resolve_base_model("SmolLM2-135M-Instruct")
    backend = backend_at(tmp_path, base, micro_batch_size=4)

    async def scenario():
        model = await registered(backend, base)
        return await backend.train(model, [group_of([1.0, 0.0, 0.0, 0.0])], learning_rate=5e-5)

    result = run(scenario())
    assert result.step == 1 and Path(result.checkpoint_path, "adapter_model.safetensors").is_file()
    assert result.metrics["grad_norm"] > 0 and result.metrics["trained_tokens"] > 20
    assert torch.isfinite(torch.tensor(result.metrics["loss"]))


def test_an_option_the_torch_backend_does_not_know_is_refused(tmp_path):
    from babylon_assets.settings import Settings
    from babylon_assets.training.torch_backend import TorchBackend, TorchTrainerConfig

    backend = TorchBackend(TorchTrainerConfig.from_settings(Settings()), path=str(tmp_path))
    with pytest.raises(TypeError, match="loss_fn"):
        asyncio.run(backend.train(None, [], learning_rate=1e-4, loss_fn="cispo"))  # type: ignore[arg-type]


def test_training_precision_is_bf16_only_where_the_device_has_it_natively(monkeypatch):
    def config(precision: str, device: str = "cpu") -> TorchTrainerConfig:
        return TorchTrainerConfig(base_model="tiny", device=device, precision=precision)  # type: ignore[arg-type]

    assert config("float32").resolved_autocast() is None
    assert config("bfloat16").resolved_autocast() == "bfloat16"
    for avx512_bf16, amx, expected in ((True, False, "bfloat16"), (False, True, "bfloat16"), (False, False, None)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda value=avx512_bf16: value)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda value=amx: value)
        assert config("auto").resolved_autocast() == expected
    # A GPU that only emulates bf16 (before Ampere) trains in float32.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert config("auto", device="cuda").resolved_autocast() is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert config("auto", device="cuda").resolved_autocast() == "bfloat16"
