"""The GRPO step (babylon_assets.training.grpo) on constructed cases and the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from babylon_assets.training.base_models import load_causal_lm
from babylon_assets.training.grpo import (
    Conversation,
    StepConfig,
    collate,
    grpo_step,
    token_logprobs,
    token_losses,
    tokenize_conversation,
)
from tests.training.conftest import PROMPT, SYSTEM, decision


def test_only_assistant_tokens_are_trained(tiny_tokenizer):
    response = '{"action": "buy", "ticker": "BTC", "size": 1}'
    sample = tokenize_conversation(tiny_tokenizer, Conversation(decision(response)), advantage=1.0)
    trained = [t for t, m in zip(sample.input_ids, sample.assistant_mask, strict=True) if m]
    assert tiny_tokenizer.decode(trained) == response + "<|im_end|>"
    prompt_part = tiny_tokenizer.decode(
        [t for t, m in zip(sample.input_ids, sample.assistant_mask, strict=True) if not m]
    )
    assert SYSTEM in prompt_part and PROMPT in prompt_part and response not in prompt_part


def test_each_assistant_turn_of_a_longer_conversation_is_trained(tiny_tokenizer):
    messages = [*decision("first"), {"role": "user", "content": "and now?"}, {"role": "assistant", "content": "second"}]
    sample = tokenize_conversation(tiny_tokenizer, Conversation(messages), advantage=1.0)
    trained = tiny_tokenizer.decode([t for t, m in zip(sample.input_ids, sample.assistant_mask, strict=True) if m])
    assert trained == "first<|im_end|>second<|im_end|>"


def test_behaviour_logprobs_are_used_only_when_they_line_up(tiny_tokenizer):
    response = "buy BTC now"
    tokens = tiny_tokenizer(response, add_special_tokens=False)["input_ids"]
    aligned = tokenize_conversation(tiny_tokenizer, Conversation(decision(response), {2: [-0.5] * len(tokens)}), 1.0)
    assert aligned.logprobs_aligned == 1
    known = [lp for lp in aligned.old_logprobs if not math.isnan(lp)]
    assert known == [-0.5] * len(tokens)  # the content tokens; <|im_end|> has none and trains on-policy
    off = tokenize_conversation(tiny_tokenizer, Conversation(decision(response), {2: [-0.5] * (len(tokens) + 3)}), 1.0)
    assert off.logprobs_misaligned == 1 and all(math.isnan(lp) for lp in off.old_logprobs)


def test_long_prompts_are_cut_from_the_left_keeping_the_response(tiny_tokenizer):
    messages = decision("hold")
    messages[1]["content"] = "market data " * 400
    sample = tokenize_conversation(tiny_tokenizer, Conversation(messages), 1.0, max_tokens=64)
    assert sample.truncated and len(sample.input_ids) == 64
    assert (
        tiny_tokenizer.decode([t for t, m in zip(sample.input_ids, sample.assistant_mask, strict=True) if m])
        == "hold<|im_end|>"
    )


def test_the_loss_reaches_no_prompt_or_padding_position(tiny_model, tiny_tokenizer):
    model = load_causal_lm(tiny_model)
    samples = [
        tokenize_conversation(tiny_tokenizer, Conversation(decision(r)), a)
        for r, a in (("buy", 1.0), ('{"action": "hold", "reason": "a much longer answer"}', -1.0))
    ]
    batch = collate(samples, tiny_tokenizer.pad_token_id)
    new = token_logprobs(model, batch)
    new.retain_grad()
    losses, _ = token_losses(new, batch.old_logprobs, batch.advantages, StepConfig())
    torch.where(batch.target_mask, losses, 0.0).sum().backward()
    assert new.grad is not None
    assert torch.equal(new.grad != 0, batch.target_mask)
    # Advantage-weighted log-likelihood where no behaviour logprobs exist: d loss / d log p = -A.
    assert torch.allclose(new.grad[0][batch.target_mask[0]], torch.tensor(-1.0))
    assert torch.allclose(new.grad[1][batch.target_mask[1]], torch.tensor(1.0))


def test_ratios_far_outside_the_clip_give_no_gradient():
    new = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = new.detach() - 1.0  # ratio e > 1.2 with a positive advantage: clipped
    losses, parts = token_losses(new, old, torch.tensor([1.0]), StepConfig(clip_epsilon=0.2))
    losses.sum().backward()
    assert new.grad is not None and torch.all(new.grad == 0)
    assert bool(parts["clipped"].all())
    # Inside the clip the ratio's own gradient flows: r * A with r = 1.
    inside = torch.tensor([[-1.0]], requires_grad=True)
    losses, parts = token_losses(inside, inside.detach().clone(), torch.tensor([2.0]), StepConfig())
    losses.sum().backward()
    assert inside.grad is not None and inside.grad.item() == pytest.approx(-2.0)


def test_kl_penalty_is_zero_at_the_reference_and_positive_away_from_it():
    new = torch.tensor([[-1.0, -2.0]])
    nan = torch.full_like(new, math.nan)
    _, parts = token_losses(new, nan, torch.tensor([0.0]), StepConfig(kl_coef=0.1), reference=new.clone())
    assert torch.all(parts["kl"] == 0)
    _, parts = token_losses(new, nan, torch.tensor([0.0]), StepConfig(kl_coef=0.1), reference=new - 0.5)
    assert torch.all(parts["kl"] > 0)


def test_a_step_accumulates_micro_batches_into_the_same_update(tiny_model, tiny_tokenizer):
    samples = [
        tokenize_conversation(tiny_tokenizer, Conversation(decision(r)), a)
        for r, a in (("buy", 1.0), ("sell now", -1.0), ("hold", 0.5), ("buy buy buy", -0.5))
    ]
    updated = []
    for micro in (1, 4):
        torch.manual_seed(0)
        model = load_causal_lm(tiny_model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        stats = grpo_step(
            model,
            optimizer,
            samples,
            StepConfig(micro_batch_size=micro, max_grad_norm=None, pad_token_id=tiny_tokenizer.pad_token_id),
        )
        assert stats.objective == "advantage_weighted_likelihood" and stats.sequences == 4
        assert stats.micro_batches == 4 // micro
        updated.append(model.lm_head.weight.detach().clone())
    assert torch.allclose(updated[0], updated[1], atol=1e-6)


def _lora(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False
    )
    return get_peft_model(model, config)


def _seats(tokenizer):
    """Two decisions' worth of seats: the seats of one decision share the rules and the market, then differ."""
    samples = []
    for market in ("BTC perp at $100.", "BTC perp at $97, ETH perp at $3,100."):
        for seat, (answer, advantage) in enumerate((("buy", 1.0), ('{"action": "hold"}', -1.0), ("sell BTC", 0.5))):
            messages = decision(answer)
            messages[1]["content"] = (
                f"{market} Prediction markets: none. News: none.\nYou are seat {seat}. Cash $10,000."
            )
            samples.append(tokenize_conversation(tokenizer, Conversation(messages), advantage))
    return samples


def test_a_shared_prompt_prefix_is_forwarded_once_with_the_same_logprobs_and_update(tiny_model, tiny_tokenizer):
    from babylon_assets.training.grpo import micro_batches, shareable_prefix

    samples = _seats(tiny_tokenizer)
    chunks = list(micro_batches(samples, 8))
    # The seats of one market go together (their prefix runs to the seat's own line), and nothing is left out.
    assert sorted(len(c) for c in chunks) == [3, 3] and sum(len(c) for c in chunks) == len(samples)
    assert all(shareable_prefix(c) > len(tiny_tokenizer(SYSTEM)["input_ids"]) for c in chunks)

    def trained_logprobs(model, share: bool) -> dict[int, list[float]]:
        """Each sample's trained tokens' logprobs, by the sample's place in `samples`."""
        values = {}
        for chunk in micro_batches(samples, 8, share):
            batch = collate(chunk, tiny_tokenizer.pad_token_id, share_prefix=share)
            assert (batch.prefix_ids is not None) == share
            with torch.no_grad():
                logprobs = token_logprobs(model, batch)
            for row, sample in enumerate(chunk):
                values[next(i for i, s in enumerate(samples) if s is sample)] = logprobs[row][batch.target_mask[row]]
        return values

    updated = []
    for share in (False, True):
        model = _lora(load_causal_lm(tiny_model))
        before = trained_logprobs(model, share)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        config = StepConfig(micro_batch_size=8, max_grad_norm=None, pad_token_id=tiny_tokenizer.pad_token_id)
        stats = grpo_step(model, optimizer, samples, StepConfig(**{**config.__dict__, "share_prefix": share}))
        assert stats.total_tokens == sum(len(s.input_ids) for s in samples)
        if share:
            assert stats.forwarded_tokens < stats.total_tokens
        else:
            assert stats.forwarded_tokens == stats.total_tokens
        updated.append((before, [p.detach().clone() for p in model.parameters() if p.requires_grad], stats.loss))
    (plain_before, plain_params, plain_loss), (shared_before, shared_params, shared_loss) = updated
    assert plain_before.keys() == shared_before.keys() == set(range(len(samples)))
    for index, logprobs in plain_before.items():
        assert torch.allclose(logprobs, shared_before[index], atol=1e-5)
    assert shared_loss == pytest.approx(plain_loss, abs=1e-6)
    initial = [p.detach() for p in _lora(load_causal_lm(tiny_model)).parameters() if p.requires_grad]
    assert any(not torch.allclose(a, b) for a, b in zip(plain_params, initial, strict=True))  # the step moved them
    for plain, shared in zip(plain_params, shared_params, strict=True):
        assert torch.allclose(plain, shared, atol=1e-6)


def test_a_bf16_autocast_step_tracks_the_float32_step_and_keeps_float32_weights(tiny_model, tiny_tokenizer):
    """TRAIN_PRECISION=bfloat16: the forwards' products in bf16, the adapter, its gradient and the optimizer in float32;
    the logprobs and the update stay close to the float32 step's (the same direction, about the same size)."""
    samples = _seats(tiny_tokenizer)
    results = []
    for autocast in (None, "bfloat16"):
        model = _lora(load_causal_lm(tiny_model))
        initial = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        batch = collate(samples, tiny_tokenizer.pad_token_id, share_prefix=False)
        with torch.no_grad():
            logprobs = token_logprobs(model, batch, autocast)[batch.target_mask]
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        config = StepConfig(micro_batch_size=8, max_grad_norm=None, pad_token_id=tiny_tokenizer.pad_token_id)
        grpo_step(model, optimizer, samples, StepConfig(**{**config.__dict__, "autocast": autocast}))
        trained = [p for p in model.parameters() if p.requires_grad]
        assert all(p.dtype == torch.float32 for p in trained)  # autocast, not a bf16 copy of the model
        update = torch.cat([(p.detach() - q).flatten() for p, q in zip(trained, initial, strict=True)])
        results.append((logprobs, update))
    (plain_logprobs, plain_update), (bf16_logprobs, bf16_update) = results
    assert not torch.equal(plain_logprobs, bf16_logprobs)  # the products did run in bf16
    assert torch.allclose(plain_logprobs, bf16_logprobs, atol=0.1)
    assert torch.nn.functional.cosine_similarity(plain_update, bf16_update, dim=0) > 0.95
    assert bf16_update.norm() == pytest.approx(float(plain_update.norm()), rel=0.1)


def test_the_micro_batch_partition_is_the_cheapest_split_of_its_order(tiny_tokenizer):
    """The dynamic programming keeps running values instead of working out each candidate's shared prefix; its answer
    is still the cheapest consecutive split, costed through shareable_prefix, found here by trying them all."""
    from dataclasses import replace
    from itertools import combinations

    from babylon_assets.training.grpo import _cheapest_partition, _forward_cost, _prefix_limit, shareable_prefix

    seats = _seats(tiny_tokenizer)[:4]
    # Where the limits bind: a row twice (its shared part stops before its first trained token), the same tokens
    # with nothing trained (its own limit is further on: the trained twin's must hold for both), and a row under
    # another system prompt (it shares only the chat template's first few tokens, too few to forward apart).
    other = decision("buy")
    other[0]["content"] = "Rules: trade well."
    untrained = replace(seats[0], assistant_mask=[False] * len(seats[0].input_ids))
    seats += [seats[0], tokenize_conversation(tiny_tokenizer, Conversation(other), 0.0), untrained]
    for sample in seats:
        first_trained = next((t for t, trained in enumerate(sample.assistant_mask) if trained), len(sample.input_ids))
        assert _prefix_limit(sample) < first_trained and _prefix_limit(sample) <= len(sample.input_ids) - 2
    by_ids = sorted(seats, key=lambda s: s.input_ids)
    # The untrained twin both after its trained twin (the earlier row's limit binds) and before it (the last row's).
    orders = [by_ids, sorted(seats, key=lambda s: -len(s.input_ids)), seats, [seats[-1], *seats[:-1]]]

    def cost(chunks, share):
        return sum(
            _forward_cost(len(c), max(len(s.input_ids) for s in c), shareable_prefix(c) if share else 0) for c in chunks
        )

    for ordered in orders:
        for size in (1, 2, 4, 8):
            for share in (True, False):
                total, chunks = _cheapest_partition(ordered, size, share)
                assert [s for c in chunks for s in c] == ordered and all(len(c) <= size for c in chunks)
                assert total == cost(chunks, share)
                splits = []
                for cuts in range(len(ordered)):
                    for points in combinations(range(1, len(ordered)), cuts):
                        bounds = [0, *points, len(ordered)]
                        candidate = [ordered[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
                        if all(len(c) <= size for c in candidate):
                            splits.append(cost(candidate, share))
                assert total == min(splits)


def test_the_shared_prefix_gives_the_same_step_for_sampled_stale_rows_with_a_reference(tiny_model, tiny_tokenizer):
    """The on-policy parts through the prefix path: per-row temperatures, the engine's logprobs (importance weight
    and engine KL), pi_old of an older version (here the base), and the KL reference."""
    from dataclasses import replace

    samples = []
    for index, sample in enumerate(_seats(tiny_tokenizer)):
        engine = [(-0.7 - 0.01 * t if trained else math.nan) for t, trained in enumerate(sample.assistant_mask)]
        samples.append(replace(sample, engine_logprobs=engine, temperature=0.7 if index % 2 else 1.0, behaviour_step=0))
    results = []
    for share in (False, True):
        model = _lora(load_causal_lm(tiny_model))
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        config = StepConfig(
            micro_batch_size=8,
            max_grad_norm=None,
            kl_coef=0.1,
            pad_token_id=tiny_tokenizer.pad_token_id,
            share_prefix=share,
        )
        stats = grpo_step(
            model,
            optimizer,
            samples,
            config,
            model.disable_adapter,
            current_step=1,
            behaviour=lambda step, model=model: model.disable_adapter(),
        )
        assert stats.stale_sequences == len(samples) and stats.on_policy_tokens > 0 and stats.kl > 0
        results.append((stats, [p.detach().clone() for p in model.parameters() if p.requires_grad]))
    (plain, plain_params), (shared, shared_params) = results
    for name in ("loss", "kl", "engine_kl", "importance_weight_mean", "mean_ratio", "clipped_fraction"):
        assert getattr(shared, name) == pytest.approx(getattr(plain, name), abs=1e-6), name
    for a, b in zip(plain_params, shared_params, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_identical_rows_without_trained_tokens_still_collate(tiny_model, tiny_tokenizer):
    from dataclasses import replace

    row = tokenize_conversation(tiny_tokenizer, Conversation(decision("hold")), 1.0)
    untrained = replace(row, assistant_mask=[False] * len(row.input_ids))
    batch = collate([untrained, untrained], tiny_tokenizer.pad_token_id)
    assert batch.prefix_ids is not None and batch.keep >= 2
    logprobs = token_logprobs(load_causal_lm(tiny_model), batch)
    assert logprobs.shape == batch.target_mask.shape and not batch.target_mask.any()


def test_sampled_tokens_that_do_not_spell_their_answer_are_refused(tiny_tokenizer):
    """An on-policy answer is trained on the engine's own ids, never re-tokenized: ids whose text is not the
    recorded answer raise, so the backend leaves that answer out (and counts it) instead of training on a guess."""
    from babylon_assets.training.grpo import MisalignedTokensError, SampledTokens

    messages = decision('{"action": "HOLD"}')
    spelled = tuple(tiny_tokenizer(messages[2]["content"], add_special_tokens=False)["input_ids"])
    other = tuple(tiny_tokenizer('{"action": "SELL"}', add_special_tokens=False)["input_ids"])

    def sampled(ids):
        return Conversation(messages, sampled={2: SampledTokens(ids, (-0.5,) * len(ids), (True,) * len(ids))})

    sample = tokenize_conversation(tiny_tokenizer, sampled(spelled), 1.0)
    assert sample.on_policy and sample.trained_tokens == len(spelled)
    with pytest.raises(MisalignedTokensError):
        tokenize_conversation(tiny_tokenizer, sampled(other), 1.0)
