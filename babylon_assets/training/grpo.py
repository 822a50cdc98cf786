"""One GRPO training step on a causal language model (DESIGN 5, 6); the advantage maths is `core.advantages`.

Plain torch: no Dagster, no ART, no database. The torch backend (`babylon_assets.training`) turns ART's
trajectory groups into `Conversation`s and calls `tokenize_conversation`, `build_samples` and
`grpo_step`; `bench/train_step.py` imports only this module, torch, transformers and peft.

Recorded play is off-policy: the agents' decisions came from whatever model served them. Where a
decision carries its token logprobs (the behaviour policy), the step uses the importance ratio with
PPO-style clipping; where it does not, the ratio is taken against the current policy itself
(old = new, detached), whose gradient is exactly advantage-weighted log-likelihood. One loss covers
both and the stats say how many tokens went which way.
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

Message = dict[str, Any]


@dataclass(frozen=True)
class Conversation:
    """One conversation to learn from: chat messages, and for assistant messages that carry them, the
    behaviour policy's token logprobs (keyed by the message's index)."""

    messages: list[Message]
    behaviour_logprobs: dict[int, list[float]] = field(default_factory=dict)


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


@dataclass(frozen=True)
class StepConfig:
    """What one optimizer step does besides the maths' fixed parts."""

    clip_epsilon: float = 0.2
    clip_epsilon_high: float | None = None  # asymmetric upper bound (DAPO's clip-higher); None = symmetric
    kl_coef: float = 0.0  # KL penalty (k3 estimator) against the reference (the base, adapter disabled)
    max_grad_norm: float | None = 1.0
    micro_batch_size: int = 4  # sequences per forward/backward; the step accumulates over all of them
    pad_token_id: int = 0


@dataclass
class StepStats:
    """What one optimizer step did."""

    loss: float = 0.0
    policy_loss: float = 0.0
    kl: float = 0.0
    grad_norm: float = 0.0
    sequences: int = 0
    trained_tokens: int = 0
    total_tokens: int = 0
    tokens_with_behaviour_logprobs: int = 0
    assistant_messages: int = 0
    messages_with_behaviour_logprobs: int = 0
    clipped_fraction: float = 0.0
    mean_ratio: float = 1.0
    seconds: float = 0.0
    micro_batches: int = 0

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
        """Tokens forwarded (prompt and response) per second of the step."""
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
            "tokens_with_behaviour_logprobs": float(self.tokens_with_behaviour_logprobs),
            "assistant_messages": float(self.assistant_messages),
            "messages_with_behaviour_logprobs": float(self.messages_with_behaviour_logprobs),
            "clipped_fraction": self.clipped_fraction,
            "mean_ratio": self.mean_ratio,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
        }


def micro_batches(samples: Sequence[Sample], size: int) -> Iterator[list[Sample]]:
    """Samples of similar length together (less padding), in a deterministic order."""
    ordered = sorted(range(len(samples)), key=lambda i: (-len(samples[i].input_ids), i))
    for start in range(0, len(ordered), size):
        yield [samples[i] for i in ordered[start : start + size]]


@dataclass(frozen=True)
class Batch:
    """A left-padded micro-batch: responses end every row, so the logits of the last `keep` positions
    cover every trained token."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    target_mask: torch.Tensor  # over the last keep - 1 positions
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    keep: int


def collate(samples: Sequence[Sample], pad_token_id: int, device: torch.device | str = "cpu") -> Batch:
    """Left-pad samples into tensors."""
    length = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), length), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(samples), length), dtype=torch.long)
    mask = torch.zeros((len(samples), length), dtype=torch.bool)
    old = torch.full((len(samples), length), math.nan, dtype=torch.float32)
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        ids[row, length - n :] = torch.tensor(sample.input_ids, dtype=torch.long)
        attention[row, length - n :] = 1
        mask[row, length - n :] = torch.tensor(sample.assistant_mask, dtype=torch.bool)
        old[row, length - n :] = torch.tensor(sample.old_logprobs, dtype=torch.float32)
    trained_positions = mask.any(dim=0).nonzero()
    first = int(trained_positions[0]) if len(trained_positions) else length - 1
    first = max(first, 1)
    keep = length - first + 1  # logits at first-1 .. length-1 predict tokens first .. length-1
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    advantages = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    return Batch(
        ids.to(device),
        attention.to(device),
        positions.to(device),
        mask[:, first:].to(device),
        old[:, first:].to(device),
        advantages.to(device),
        keep,
    )


def token_logprobs(model: Any, batch: Batch) -> torch.Tensor:
    """Log-probability of each of the last keep - 1 tokens under the model: [rows, keep - 1]."""
    output = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=batch.keep,
        use_cache=False,
    )
    logits = output.logits[:, :-1, :].float()
    targets = batch.input_ids[:, -(batch.keep - 1) :]
    return -F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none").view(
        targets.shape
    )


def token_losses(
    new: torch.Tensor,
    old: torch.Tensor,
    advantages: torch.Tensor,
    config: StepConfig,
    reference: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token loss: -min(r A, clip(r) A) (+ kl_coef * k3 KL to the reference), r = exp(new - old).

    Where `old` is NaN the current policy stands in for it (detached): r = 1 with the gradient of
    A * log p, i.e. advantage-weighted log-likelihood.
    """
    known = ~torch.isnan(old)
    behaviour = torch.where(known, old, new.detach())
    ratio = torch.exp(new - behaviour)
    adv = advantages.unsqueeze(1)
    high = config.clip_epsilon if config.clip_epsilon_high is None else config.clip_epsilon_high
    clipped_ratio = ratio.clamp(1.0 - config.clip_epsilon, 1.0 + high)
    policy = -torch.minimum(ratio * adv, clipped_ratio * adv)
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
    }
    return losses, parts


ReferenceContext = Callable[[], AbstractContextManager[Any]]


def grpo_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    samples: Sequence[Sample],
    config: StepConfig,
    reference: ReferenceContext | None = None,
) -> StepStats:
    """One optimizer step over all samples, accumulated micro-batch by micro-batch.

    The loss is the mean over every trained token of the step (token-level, so long and short responses
    weigh by their tokens and accumulation gives the same gradient as one big batch). `reference` enters
    the reference policy (for peft: `model.disable_adapter`), needed only when `kl_coef > 0`.
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
    ratio_sum = clipped = 0.0
    for chunk in micro_batches(samples, config.micro_batch_size):
        batch = collate(chunk, config.pad_token_id, device)
        reference_logprobs = None
        if config.kl_coef > 0 and reference is not None:
            with torch.no_grad(), reference():
                reference_logprobs = token_logprobs(model, batch)
        new = token_logprobs(model, batch)
        losses, parts = token_losses(new, batch.old_logprobs, batch.advantages, config, reference_logprobs)
        mask = batch.target_mask
        # where, not a product: a padded position's value must not reach the sum even if it is NaN.
        loss = torch.where(mask, losses, 0.0).sum() / total_trained
        loss.backward()
        stats.loss += float(loss.detach())
        stats.policy_loss += float(torch.where(mask, parts["policy"], 0.0).sum().detach()) / total_trained
        stats.kl += float(torch.where(mask, parts["kl"], 0.0).sum().detach()) / total_trained
        stats.tokens_with_behaviour_logprobs += int((parts["known"] & mask).sum())
        ratio_sum += float(torch.where(mask, parts["ratio"], 0.0).sum())
        clipped += float((parts["clipped"] & mask).sum())
        stats.total_tokens += int(batch.attention_mask.sum())
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
    stats.clipped_fraction = clipped / total_trained
    stats.seconds = time.perf_counter() - started
    return stats


@torch.no_grad()
def sequence_logprob(model: Any, sample: Sample) -> float:
    """Sum of the model's log-probabilities of the sample's trained tokens (for tests and evaluation)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    batch = collate([sample], 0, device)
    value = float(torch.where(batch.target_mask, token_logprobs(model, batch), 0.0).sum())
    model.train(was_training)
    return value
