"""One GRPO training step on a causal language model (DESIGN 5, 6); the advantage maths is `core.advantages`.

Plain torch: no Dagster, no ART, no database. The torch backend (`babylon_assets.training`) turns ART's
trajectory groups into `Conversation`s and calls `tokenize_conversation`, `build_samples` and
`grpo_step`; `bench/train_step.py` imports only this module, torch, transformers and peft.

On-policy samples (issue 20) carry the engine's sampled token ids and logprobs: the trainer learns on those very
tokens after the prompt as the agent saw it (never re-tokenized, never cut). The PPO ratio is taken against the
trainer's own log-probabilities of the version that played (detached; at staleness 0 the current model, so the
ratio is 1 with the gradient of A log p); the engine's logprobs (a quantized engine, sampled through a grammar
mask) enter only as a truncated importance weight min(pi_old / mu, cap) and as a trainer-vs-engine KL, reported.
Tokens the schema's grammar forced can be left out of the loss (they carry the group's advantage in every sample).

Recorded play without token ids is off-policy: where a decision carries token logprobs that line up with our
tokenization, the ratio is taken against them with PPO-style clipping; where not, against the current policy
(advantage-weighted log-likelihood). One loss covers all of them and the stats say how many tokens went which way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

# The dtype of the training forwards' products under autocast; None: float32 throughout.
Autocast = Literal["bfloat16"] | None

Message = dict[str, Any]


@dataclass(frozen=True)
class SampledTokens:
    """An assistant message as the engine sampled it: token ids, the engine's logprob of each (mu), and which of
    them the loss trains on (False: a token the schema's grammar forced, when those are masked)."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    trained: tuple[bool, ...]


@dataclass(frozen=True)
class Conversation:
    """One conversation to learn from: chat messages, and for assistant messages that carry them, the
    behaviour policy's token logprobs (keyed by the message's index), or the sampled tokens themselves
    (on-policy play), with the temperature they were sampled at and the training step of the version that
    sampled them."""

    messages: list[Message]
    behaviour_logprobs: dict[int, list[float]] = field(default_factory=dict)
    sampled: dict[int, SampledTokens] = field(default_factory=dict)
    temperature: float = 1.0
    behaviour_step: int | None = None


@dataclass(frozen=True)
class Sample:
    """A tokenized conversation with its advantage: which tokens get gradient and, where known, the
    behaviour logprob of each (NaN where unknown)."""

    input_ids: list[int]
    assistant_mask: list[bool]
    old_logprobs: list[float]
    advantage: float
    assistant_messages: int = 0
    logprobs_aligned: int = 0  # assistant messages whose behaviour logprobs matched our tokens
    logprobs_misaligned: int = 0  # ... that carried logprobs which did not (trained without them)
    truncated: bool = False
    # On-policy: the engine's logprob of each sampled token (NaN elsewhere), the sampling temperature, the step of
    # the version that sampled, and the sampled tokens the grammar forced (left out of the loss).
    engine_logprobs: list[float] = field(default_factory=list)
    temperature: float = 1.0
    behaviour_step: int | None = None
    forced_tokens: int = 0

    @property
    def on_policy(self) -> bool:
        """Trained on the engine's own sampled tokens."""
        return bool(self.engine_logprobs)

    @property
    def trained_tokens(self) -> int:
        """How many tokens get gradient."""
        return sum(self.assistant_mask)


def _render(tokenizer: Any, messages: list[Message], add_generation_prompt: bool) -> str:
    plain = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
    return str(tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=add_generation_prompt))


def tokenize_conversation(
    tokenizer: Any, conversation: Conversation, advantage: float, max_tokens: int | None = None
) -> Sample:
    """Tokenize with the model's chat template; only the assistant messages' tokens (and the end-of-turn
    token the template closes them with) get gradient, never the system or user prompt.

    Spans are found by rendering each prefix (which must be a prefix of the whole, as it is for ChatML
    templates) and mapped to tokens through the tokenizer's character offsets.
    """
    if conversation.sampled:
        return tokenize_sampled(tokenizer, conversation, advantage)
    messages = conversation.messages
    full_text = _render(tokenizer, messages, add_generation_prompt=False)
    spans: list[tuple[int, int, int, int]] = []  # (message index, span start, content end, span end)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:index], add_generation_prompt=True)
        through = _render(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if not (through.startswith(before) and full_text.startswith(through)):
            raise ValueError(
                "the chat template does not render conversations prefix by prefix; "
                "cannot tell the assistant's tokens apart"
            )
        content = message.get("content") or ""
        content_start = through.find(content, len(before)) if content else len(before)
        content_end = content_start + len(content)
        spans.append((index, len(before), content_end, len(through.rstrip())))
    encoding = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = list(encoding["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in encoding["offset_mapping"]]
    mask = [False] * len(input_ids)
    old = [math.nan] * len(input_ids)
    aligned = misaligned = 0
    for index, start, content_end, end in spans:
        in_span = [t for t, (a, b) in enumerate(offsets) if b > a and a >= start and b <= end]
        for t in in_span:
            mask[t] = True
        behaviour = conversation.behaviour_logprobs.get(index)
        if behaviour is None:
            continue
        content_tokens = [t for t in in_span if offsets[t][1] <= content_end]
        if len(content_tokens) == len(behaviour):
            for t, logprob in zip(content_tokens, behaviour, strict=True):
                old[t] = float(logprob)
            aligned += 1
        else:
            # Another tokenizer (or a re-tokenized reply) produced them: a ratio token by token would pair
            # the wrong tokens, so this message trains on-policy-style instead.
            misaligned += 1
    truncated = False
    if max_tokens is not None and len(input_ids) > max_tokens:
        # Drop the oldest prompt tokens; the response sits at the end and is what we learn from.
        cut = len(input_ids) - max_tokens
        input_ids, mask, old = input_ids[cut:], mask[cut:], old[cut:]
        truncated = True
    if mask and mask[0]:
        mask[0] = False  # the first token has no prediction (nothing precedes it)
    return Sample(input_ids, mask, old, float(advantage), len(spans), aligned, misaligned, truncated)


def _spells(decoded: str, content: str) -> bool:
    """Whether decoded ids are the recorded text. A character whose UTF-8 bytes span tokens may be decoded otherwise
    (the engine joins the bytes, a tokenizer may not), so outside ASCII only the ASCII must agree; another
    vocabulary garbles the ASCII too."""
    if decoded == content:
        return True
    return "".join(c for c in decoded if c.isascii()) == "".join(c for c in content if c.isascii())


class MisalignedTokensError(ValueError):
    """Sampled token ids that are not the recorded answer under this tokenizer (another model's vocabulary)."""


def tokenize_sampled(tokenizer: Any, conversation: Conversation, advantage: float) -> Sample:
    """An on-policy sample: each prompt rendered with the chat template as the agent's engine rendered it, then the
    sampled token ids exactly as sampled, then the template's end of turn. Nothing is re-tokenized and nothing is
    cut (DESIGN 5): the whole system prompt and observation are trained on as the agent saw them."""
    messages = conversation.messages
    input_ids: list[int] = []
    mask: list[bool] = []
    engine: list[float] = []
    forced = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        sampled = conversation.sampled.get(index)
        if sampled is None:
            raise ValueError(f"message {index} of an on-policy conversation carries no sampled tokens")
        content = message.get("content") or ""
        # The engine's ids may end with the end-of-turn token it sampled (its text is empty).
        if not _spells(tokenizer.decode(list(sampled.token_ids), skip_special_tokens=True), content):
            raise MisalignedTokensError(
                f"the sampled token ids of message {index} do not spell its recorded answer under this tokenizer"
            )
        before = _render(tokenizer, messages[:index], add_generation_prompt=True)
        through = _render(tokenizer, messages[: index + 1], add_generation_prompt=False)
        prefix_ids = tokenizer(before, add_special_tokens=False)["input_ids"]
        if input_ids and prefix_ids[: len(input_ids)] != input_ids:
            raise ValueError("the chat template does not render conversations prefix by prefix")
        new_prompt = prefix_ids[len(input_ids) :]
        input_ids += new_prompt
        mask += [False] * len(new_prompt)
        engine += [math.nan] * len(new_prompt)
        input_ids += list(sampled.token_ids)
        mask += list(sampled.trained)
        engine += list(sampled.logprobs)
        forced += sum(1 for trained in sampled.trained if not trained)
        # The template's end of turn after the content. Where the engine sampled the end-of-turn token itself, it is
        # among the ids (trained or masked like any sampled token) and only the rest of the template follows.
        end = through[len(before) + len(content) :]
        end_ids = tokenizer(end, add_special_tokens=False)["input_ids"] if end else []
        if end_ids and sampled.token_ids and sampled.token_ids[-1] == end_ids[0]:
            end_ids = end_ids[1:]
        input_ids += end_ids
        mask += [False] * len(end_ids)
        engine += [math.nan] * len(end_ids)
    if mask and mask[0]:
        mask[0] = False
    assistant = sum(1 for m in messages if m["role"] == "assistant")
    return Sample(
        input_ids,
        mask,
        [math.nan] * len(input_ids),
        float(advantage),
        assistant,
        engine_logprobs=engine,
        temperature=conversation.temperature,
        behaviour_step=conversation.behaviour_step,
        forced_tokens=forced,
    )


@dataclass(frozen=True)
class StepConfig:
    """What one optimizer step does besides the maths' fixed parts."""

    clip_epsilon: float = 0.2
    clip_epsilon_high: float | None = None  # asymmetric upper bound (DAPO's clip-higher); None = symmetric
    kl_coef: float = 0.0  # KL penalty (k3 estimator) against the reference (the base, adapter disabled)
    max_grad_norm: float | None = 1.0
    micro_batch_size: int = 4  # sequences per forward/backward; the step accumulates over all of them
    pad_token_id: int = 0
    importance_weight_cap: float = 2.0  # the truncated importance weight min(pi_old / mu, cap) of on-policy tokens
    # Forward the prompt prefix a micro-batch's rows share once (the same gradient, less work).
    share_prefix: bool = True
    # "bfloat16": the decoder's matrix products in bf16 under autocast (the weights, the LoRA adapter, the optimizer,
    # the output head's logits and the loss stay float32); None: everything in float32.
    autocast: Autocast = None


@dataclass
class StepStats:
    """What one optimizer step did."""

    loss: float = 0.0
    policy_loss: float = 0.0
    kl: float = 0.0
    grad_norm: float = 0.0
    sequences: int = 0
    trained_tokens: int = 0
    total_tokens: int = 0  # the samples' tokens (prompt and response)
    forwarded_tokens: int = 0  # tokens the model computed: a micro-batch's shared prefix once
    tokens_with_behaviour_logprobs: int = 0
    assistant_messages: int = 0
    messages_with_behaviour_logprobs: int = 0
    clipped_fraction: float = 0.0
    mean_ratio: float = 1.0
    p95_ratio: float = 1.0
    seconds: float = 0.0
    micro_batches: int = 0
    on_policy_tokens: int = 0  # trained tokens with the engine's logprob
    forced_tokens_masked: int = 0
    importance_weight_mean: float = 1.0
    importance_weight_capped: float = 0.0  # share of on-policy tokens whose weight hit the cap
    engine_kl: float = 0.0  # trainer vs engine on the sampled tokens (k3 estimator, per token)
    stale_sequences: int = 0  # sequences whose pi_old came from an older version's adapter

    @property
    def objective(self) -> Literal["importance_ratio_clipped", "advantage_weighted_likelihood", "mixed", "none"]:
        """Which objective the step optimised, by assistant message: PPO-clipped ratios where the message's
        behaviour logprobs were known, advantage-weighted log-likelihood where not. (The end-of-turn token
        has no recorded logprob even then; it always trains on-policy-style.)"""
        if self.trained_tokens == 0:
            return "none"
        if self.messages_with_behaviour_logprobs == 0:
            return "advantage_weighted_likelihood"
        if self.messages_with_behaviour_logprobs == self.assistant_messages:
            return "importance_ratio_clipped"
        return "mixed"

    @property
    def tokens_per_second(self) -> float:
        """The samples' tokens (prompt and response) trained on per second of the step."""
        return self.total_tokens / self.seconds if self.seconds > 0 else 0.0

    def as_metrics(self) -> dict[str, float]:
        """Numbers for logging."""
        return {
            "loss": self.loss,
            "policy_loss": self.policy_loss,
            "kl": self.kl,
            "grad_norm": self.grad_norm,
            "sequences": float(self.sequences),
            "trained_tokens": float(self.trained_tokens),
            "total_tokens": float(self.total_tokens),
            "forwarded_tokens": float(self.forwarded_tokens),
            "tokens_with_behaviour_logprobs": float(self.tokens_with_behaviour_logprobs),
            "assistant_messages": float(self.assistant_messages),
            "messages_with_behaviour_logprobs": float(self.messages_with_behaviour_logprobs),
            "clipped_fraction": self.clipped_fraction,
            "mean_ratio": self.mean_ratio,
            "p95_ratio": self.p95_ratio,
            "on_policy_tokens": float(self.on_policy_tokens),
            "forced_tokens_masked": float(self.forced_tokens_masked),
            "importance_weight_mean": self.importance_weight_mean,
            "importance_weight_capped": self.importance_weight_capped,
            "engine_kl": self.engine_kl,
            "stale_sequences": float(self.stale_sequences),
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
        }


# A micro-batch's fixed cost in tokens' worth of work (one more forward and backward), so that the partition below does
# not split rows apart for a few tokens of padding.
MICRO_BATCH_OVERHEAD_TOKENS = 64
# A shared prefix shorter than this is not worth a forward of its own.
MIN_SHARED_PREFIX_TOKENS = 16


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids two sequences share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _prefix_limit(sample: Sample) -> int:
    """The most leading tokens of this sample a shared forward may compute: fewer than its first trained token
    (that token's prediction comes from the sample's own part), and two of its own tokens at least (the row's first
    prediction needs a position before it in the row)."""
    first_trained = next((t for t, trained in enumerate(sample.assistant_mask) if trained), len(sample.input_ids))
    return min(first_trained - 1, len(sample.input_ids) - 2)


def _worth_sharing(shared: int, rows: int) -> int:
    """`shared` when one forward of it for `rows` rows pays, else 0."""
    return shared if rows >= 2 and shared >= MIN_SHARED_PREFIX_TOKENS else 0


def shareable_prefix(samples: Sequence[Sample]) -> int:
    """The leading tokens every sample shares that one forward can compute for all (within each sample's
    `_prefix_limit`); 0 when it is too short to be worth it or there is nobody to share with."""
    if len(samples) < 2:
        return 0
    shared = len(samples[0].input_ids)
    for sample in samples[1:]:
        shared = min(shared, common_prefix_length(samples[0].input_ids, sample.input_ids))
    shared = min([shared, *(_prefix_limit(sample) for sample in samples)])
    return _worth_sharing(shared, len(samples))


def _forward_cost(rows: int, longest: int, shared: int) -> int:
    """Tokens one micro-batch forwards: its shared prefix once, then every row padded to its longest remainder."""
    return MICRO_BATCH_OVERHEAD_TOKENS + shared + rows * (longest - shared)


def _cheapest_partition(ordered: list[Sample], size: int, share_prefix: bool) -> tuple[int, list[list[Sample]]]:
    """The split of `ordered` into consecutive micro-batches of at most `size` rows that forwards the fewest tokens
    (dynamic programming over the cut points)."""
    # best[i]: (the cost of ordered[:i], where its last micro-batch starts)
    best: list[tuple[int, int]] = [(0, 0)] * (len(ordered) + 1)
    limits = [_prefix_limit(sample) for sample in ordered] if share_prefix else []
    for end in range(1, len(ordered) + 1):
        last = ordered[end - 1]
        # Grow the candidate micro-batch ordered[start:end] leftwards, keeping what shareable_prefix and the padding
        # need as running values: the common prefix of a set is its common prefix with any one member (`last`).
        common = limits[end - 1] if share_prefix else 0
        longest = 0
        candidates = []
        for start in range(end - 1, max(0, end - size) - 1, -1):
            sample = ordered[start]
            longest = max(longest, len(sample.input_ids))
            if share_prefix and start < end - 1:
                common = min(common, limits[start], common_prefix_length(last.input_ids, sample.input_ids))
            shared = _worth_sharing(common, end - start) if share_prefix else 0
            candidates.append((best[start][0] + _forward_cost(end - start, longest, shared), start))
        best[end] = min(candidates)
    chunks: list[list[Sample]] = []
    end = len(ordered)
    while end > 0:
        start = best[end][1]
        chunks.append(ordered[start:end])
        end = start
    return best[-1][0], chunks[::-1]


def micro_batches(samples: Sequence[Sample], size: int, share_prefix: bool = True) -> Iterator[list[Sample]]:
    """Samples of one behaviour version in micro-batches of at most `size` rows, in a deterministic order that forwards
    the fewest tokens: samples that share a prompt prefix (the seats of one window at one decision see the same
    rules and market) together, so their prefix is computed once (`collate`), else similar lengths together."""
    by_version: dict[int, list[int]] = {}
    for index, sample in enumerate(samples):
        by_version.setdefault(-1 if sample.behaviour_step is None else sample.behaviour_step, []).append(index)
    for version in sorted(by_version):
        indices = by_version[version]
        by_length = [samples[i] for i in sorted(indices, key=lambda i: (-len(samples[i].input_ids), i))]
        orders = [by_length]
        if share_prefix:
            orders.append([samples[i] for i in sorted(indices, key=lambda i: (samples[i].input_ids, i))])
        _, chunks = min((_cheapest_partition(order, size, share_prefix) for order in orders), key=lambda c: c[0])
        yield from chunks


@dataclass(frozen=True)
class Batch:
    """A left-padded micro-batch: responses end every row, so the logits of the last `keep` positions
    cover every trained token. With `prefix_ids`, the rows' shared leading tokens are left out of the rows and
    forwarded once; the rows hold what follows them (left-padded, positioned after the prefix)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    target_mask: torch.Tensor  # over the last keep - 1 positions
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    keep: int
    engine_logprobs: torch.Tensor | None = None  # NaN where unknown; None when no row is on-policy
    temperatures: torch.Tensor | None = None  # per row; None when every row is at 1
    prefix_ids: torch.Tensor | None = None  # [1, shared]: the leading tokens every row shares

    @property
    def shared_prefix(self) -> int:
        """How many leading tokens the rows share and forward once."""
        return 0 if self.prefix_ids is None else int(self.prefix_ids.shape[1])

    @property
    def forwarded_tokens(self) -> int:
        """Tokens one forward of this batch computes: the shared prefix once, padding not counted (a reference or
        behaviour forward, when the step needs one, computes as many again)."""
        return self.shared_prefix + int(self.attention_mask.sum())

    @property
    def sample_tokens(self) -> int:
        """Tokens the batch's samples hold (the shared prefix in every row)."""
        return self.shared_prefix * int(self.input_ids.shape[0]) + int(self.attention_mask.sum())


def collate(
    samples: Sequence[Sample], pad_token_id: int, device: torch.device | str = "cpu", share_prefix: bool = True
) -> Batch:
    """Left-pad samples into tensors; with `share_prefix`, the leading tokens they all share go into `prefix_ids`."""
    shared = shareable_prefix(samples) if share_prefix else 0
    rows = [list(s.input_ids[shared:]) for s in samples]
    length = max(len(r) for r in rows)
    ids = torch.full((len(samples), length), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(samples), length), dtype=torch.long)
    mask = torch.zeros((len(samples), length), dtype=torch.bool)
    old = torch.full((len(samples), length), math.nan, dtype=torch.float32)
    for row, (sample, kept) in enumerate(zip(samples, rows, strict=True)):
        n = len(kept)
        ids[row, length - n :] = torch.tensor(kept, dtype=torch.long)
        attention[row, length - n :] = 1
        mask[row, length - n :] = torch.tensor(sample.assistant_mask[shared:], dtype=torch.bool)
        old[row, length - n :] = torch.tensor(sample.old_logprobs[shared:], dtype=torch.float32)
    trained_positions = mask.any(dim=0).nonzero()
    first = int(trained_positions[0]) if len(trained_positions) else length - 1
    first = max(first, 1)
    keep = length - first + 1  # logits at first-1 .. length-1 predict tokens first .. length-1
    positions = shared + (attention.cumsum(dim=1) - 1).clamp(min=0)
    advantages = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    engine = None
    if any(s.on_policy for s in samples):
        engine = torch.full((len(samples), length), math.nan, dtype=torch.float32)
        for row, sample in enumerate(samples):
            if sample.on_policy:
                engine[row, length - len(rows[row]) :] = torch.tensor(sample.engine_logprobs[shared:])
        engine = engine[:, first:].to(device)
    temperatures = None
    if any(s.temperature != 1.0 for s in samples):
        temperatures = torch.tensor([s.temperature for s in samples], dtype=torch.float32).to(device)
    prefix = torch.tensor([list(samples[0].input_ids[:shared])], dtype=torch.long).to(device) if shared else None
    return Batch(
        ids.to(device),
        attention.to(device),
        positions.to(device),
        mask[:, first:].to(device),
        old[:, first:].to(device),
        advantages.to(device),
        keep,
        engine,
        temperatures,
        prefix,
    )


def token_logprobs(model: Any, batch: Batch, autocast: Autocast = None) -> torch.Tensor:
    """Log-probability of each of the last keep - 1 tokens under the model at each row's sampling temperature:
    [rows, keep - 1]."""
    return _token_logprobs(model, batch, autocast)[0]


def _token_logprobs(model: Any, batch: Batch, autocast: Autocast = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(at the rows' temperatures, at temperature 1): the engine reports its logprobs at 1, before temperature."""
    dtype = getattr(torch, autocast) if autocast else None
    with torch.autocast(device_type=batch.input_ids.device.type, dtype=dtype, enabled=dtype is not None):
        hidden = _last_hidden(model.get_decoder(), batch)
    # The output head outside autocast: logits of 15-30 rounded to bf16 (steps of 0.125) would move each logprob by up
    # to 0.06, and the ratio, the importance weight and the KL are differences of logprobs. On kept positions only.
    logits = model.get_output_embeddings()(hidden[:, -batch.keep : -1, :].float()).float()
    targets = batch.input_ids[:, -(batch.keep - 1) :]

    def gathered(scaled: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(scaled.reshape(-1, scaled.shape[-1]), targets.reshape(-1), reduction="none").view(
            targets.shape
        )

    plain = gathered(logits)
    if batch.temperatures is None:
        return plain, plain
    return gathered(logits / batch.temperatures.view(-1, 1, 1)), plain


def _last_hidden(decoder: Any, batch: Batch) -> torch.Tensor:
    """The decoder's last hidden states of the batch's rows (after the final norm)."""
    if batch.prefix_ids is None:
        return decoder(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        ).last_hidden_state
    # The shared prefix once, its keys and values repeated for every row: the gradient through them is the sum of
    # the rows' (as if each row had computed the prefix itself) for a fraction of the work.
    cache = decoder(input_ids=batch.prefix_ids, use_cache=True).past_key_values
    rows = batch.input_ids.shape[0]
    cache.batch_repeat_interleave(rows)
    ones = torch.ones((rows, batch.shared_prefix), dtype=batch.attention_mask.dtype, device=batch.input_ids.device)
    return decoder(
        input_ids=batch.input_ids,
        attention_mask=torch.cat([ones, batch.attention_mask], dim=1),
        position_ids=batch.position_ids,
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state


def token_losses(
    new: torch.Tensor,
    old: torch.Tensor,
    advantages: torch.Tensor,
    config: StepConfig,
    reference: torch.Tensor | None = None,
    *,
    trainer_old: torch.Tensor | None = None,
    engine: torch.Tensor | None = None,
    trainer_old_plain: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token loss: -w min(r A, clip(r) A) (+ kl_coef * k3 KL to the reference), r = exp(new - old).

    `old` is a recorded behaviour logprob on our tokens (NaN where none); elsewhere the trainer's own logprob of
    the version that played stands in (`trainer_old`, detached; the current policy itself when not given): r = 1
    at staleness 0 with the gradient of A * log p. `engine` (NaN where unknown) is the engine's logprob of the
    sampled token, mu: w = min(exp(pi_old - mu), cap) there, 1 elsewhere, compared at temperature 1
    (`trainer_old_plain`), since the engine reports its logprobs before temperature.
    """
    known = ~torch.isnan(old)
    pi_old = new.detach() if trainer_old is None else trainer_old
    behaviour = torch.where(known, old, pi_old)
    ratio = torch.exp(new - behaviour)
    adv = advantages.unsqueeze(1)
    high = config.clip_epsilon if config.clip_epsilon_high is None else config.clip_epsilon_high
    clipped_ratio = ratio.clamp(1.0 - config.clip_epsilon, 1.0 + high)
    policy = -torch.minimum(ratio * adv, clipped_ratio * adv)
    weight = torch.ones_like(new)
    engine_known = torch.zeros_like(known)
    engine_kl = torch.zeros_like(new)
    if engine is not None:
        engine_known = ~torch.isnan(engine)
        plain_old = pi_old if trainer_old_plain is None else trainer_old_plain
        log_weight = torch.where(engine_known, plain_old - engine, 0.0)
        weight = torch.where(engine_known, torch.exp(log_weight).clamp(max=config.importance_weight_cap), 1.0)
        engine_kl = torch.where(engine_known, torch.exp(log_weight) - log_weight - 1.0, 0.0)
        policy = policy * weight.detach()
    losses = policy
    kl = torch.zeros_like(new)
    if reference is not None and config.kl_coef > 0:
        delta = reference - new
        kl = torch.exp(delta) - delta - 1.0
        losses = policy + config.kl_coef * kl
    parts = {
        "policy": policy,
        "kl": kl,
        "ratio": ratio.detach(),
        "known": known,
        "clipped": (ratio.detach() != clipped_ratio.detach()),
        "weight": weight.detach(),
        "engine_known": engine_known,
        "engine_kl": engine_kl.detach(),
    }
    return losses, parts


ReferenceContext = Callable[[], AbstractContextManager[Any]]
# Enters the policy as it was at a training step (for peft: that checkpoint's adapter), for pi_old of stale play.
BehaviourContext = Callable[[int], AbstractContextManager[Any]]


def grpo_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    samples: Sequence[Sample],
    config: StepConfig,
    reference: ReferenceContext | None = None,
    *,
    current_step: int | None = None,
    behaviour: BehaviourContext | None = None,
) -> StepStats:
    """One optimizer step over all samples, accumulated micro-batch by micro-batch.

    The loss is the mean over every trained token of the step (token-level, so long and short responses
    weigh by their tokens and accumulation gives the same gradient as one big batch). `reference` enters
    the reference policy (for peft: `model.disable_adapter`), needed only when `kl_coef > 0`. Samples whose
    `behaviour_step` is not `current_step` take pi_old under `behaviour(step)`.
    """
    started = time.perf_counter()
    stats = StepStats()
    total_trained = sum(s.trained_tokens for s in samples)
    if total_trained == 0:
        return stats
    if config.kl_coef > 0 and reference is None:
        raise ValueError("kl_coef > 0 needs a reference policy (the base model with the adapter disabled)")
    device = next(model.parameters()).device
    model.train()
    optimizer.zero_grad(set_to_none=True)
    ratio_sum = clipped = weight_sum = capped = kl_sum = 0.0
    ratios: list[torch.Tensor] = []
    for chunk in micro_batches(samples, config.micro_batch_size, config.share_prefix):
        batch = collate(chunk, config.pad_token_id, device, config.share_prefix)
        reference_logprobs = None
        if config.kl_coef > 0 and reference is not None:
            with torch.no_grad(), reference():
                reference_logprobs = token_logprobs(model, batch, config.autocast)
        trainer_old = trainer_old_plain = None
        version = chunk[0].behaviour_step
        if version is not None and current_step is not None and version != current_step:
            if behaviour is None:
                raise ValueError(f"samples played by step {version} need the behaviour policy of that step")
            with torch.no_grad(), behaviour(version):
                trainer_old, trainer_old_plain = _token_logprobs(model, batch, config.autocast)
            stats.stale_sequences += len(chunk)
        new, new_plain = _token_logprobs(model, batch, config.autocast)
        if trainer_old_plain is None:
            trainer_old_plain = new_plain.detach()
        losses, parts = token_losses(
            new,
            batch.old_logprobs,
            batch.advantages,
            config,
            reference_logprobs,
            trainer_old=trainer_old,
            engine=batch.engine_logprobs,
            trainer_old_plain=trainer_old_plain,
        )
        mask = batch.target_mask
        # where, not a product: a padded position's value must not reach the sum even if it is NaN.
        loss = torch.where(mask, losses, 0.0).sum() / total_trained
        loss.backward()
        stats.loss += float(loss.detach())
        stats.policy_loss += float(torch.where(mask, parts["policy"], 0.0).sum().detach()) / total_trained
        stats.kl += float(torch.where(mask, parts["kl"], 0.0).sum().detach()) / total_trained
        stats.tokens_with_behaviour_logprobs += int((parts["known"] & mask).sum())
        ratio_sum += float(torch.where(mask, parts["ratio"], 0.0).sum())
        ratios.append(parts["ratio"][mask].float().cpu())
        clipped += float((parts["clipped"] & mask).sum())
        on_policy = parts["engine_known"] & mask
        stats.on_policy_tokens += int(on_policy.sum())
        weight_sum += float(torch.where(on_policy, parts["weight"], 0.0).sum())
        capped += float((on_policy & (parts["weight"] >= config.importance_weight_cap)).sum())
        kl_sum += float(torch.where(on_policy, parts["engine_kl"], 0.0).sum())
        stats.total_tokens += batch.sample_tokens
        stats.forwarded_tokens += batch.forwarded_tokens
        stats.micro_batches += 1
    params = [p for p in model.parameters() if p.requires_grad]
    if config.max_grad_norm is not None:
        stats.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
    else:
        stats.grad_norm = float(
            torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params if p.grad is not None]))
        )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    stats.sequences = len(samples)
    stats.assistant_messages = sum(s.assistant_messages for s in samples)
    stats.messages_with_behaviour_logprobs = sum(s.logprobs_aligned for s in samples)
    stats.trained_tokens = total_trained
    stats.mean_ratio = ratio_sum / total_trained
    all_ratios = torch.cat(ratios) if ratios else torch.ones(1)
    stats.p95_ratio = float(torch.quantile(all_ratios, 0.95)) if all_ratios.numel() else 1.0
    stats.clipped_fraction = clipped / total_trained
    stats.forced_tokens_masked = sum(s.forced_tokens for s in samples)
    if stats.on_policy_tokens:
        stats.importance_weight_mean = weight_sum / stats.on_policy_tokens
        stats.importance_weight_capped = capped / stats.on_policy_tokens
        stats.engine_kl = kl_sum / stats.on_policy_tokens
    stats.seconds = time.perf_counter() - started
    return stats


@torch.no_grad()
def sequence_logprob(model: Any, sample: Sample) -> float:
    """Sum of the model's log-probabilities of the sample's trained tokens (for tests and evaluation)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    batch = collate([sample], 0, device, share_prefix=False)
    value = float(torch.where(batch.target_mask, token_logprobs(model, batch), 0.0).sum())
    model.train(was_training)
    return value
