"""The `ruler` judge: OpenPipe ART's RULER through litellm, behind the judge interface (DESIGN 6).

What it adds to ART's `ruler()`: the judge view of DESIGN 5 (the window's ground truth in one shared
system message, agent text JSON-encoded inside its own trajectory block), a cache keyed by (judge view,
judge model, rubric version), groups of identical trajectories never sent, retries with backoff that
honour Retry-After, validation of every answer (one score per known id, each in [0, 1]), a token and
dollar budget that stops before it is exceeded, and a call mode for weak judges that pins the answer's
JSON schema to the exact ids (`pinned`), beside ART's own call (`art`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiohttp

from babylon_assets.core.eligibility import AgentWindow
from babylon_assets.core.judging import CachedJudgment, JudgeGroup, JudgeResult, JudgeUsage, Judgment
from babylon_assets.core.rubric import rubric_text
from babylon_assets.core.views import decision_conversations, judge_messages
from babylon_assets.llm.openai_compat import PLACEHOLDER_API_KEY, speaks_openai

Mode = Literal["art", "pinned"]


class JudgeCache(Protocol):
    """Where judged groups are remembered (the store implements it)."""

    def cached_judgment(self, cache_key: str) -> CachedJudgment | None: ...

    def claim_judgment(self, cache_key: str, owner: str, stale_after_s: float) -> bool: ...

    def claim_holder(self, cache_key: str) -> str | None: ...

    def release_judgment(self, cache_key: str, owner: str) -> None: ...

    def cache_judgment(
        self,
        cache_key: str,
        judge_version: str,
        window_id: str,
        group_id: str,
        scores: dict[str, tuple[float, str]],
        tokens_in: int,
        tokens_out: int,
        dollars: float,
    ) -> None: ...


def _holder_is_gone(holder: str | None) -> bool:
    """Whether a claim's holder ("host:pid:..."), on this host, is a process that no longer exists."""
    host, _, rest = (holder or "").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class BudgetExhausted(RuntimeError):
    """The next call would exceed JUDGE_BUDGET_USD or JUDGE_BUDGET_TOKENS; it was not sent."""


class BadJudgeAnswer(ValueError):
    """An answer that is not one score in [0, 1] for each known id."""


@dataclass(frozen=True, slots=True)
class RulerConfig:
    """The RULER judge's settings (JUDGE_* in DESIGN 7), built by `JudgeResource.ruler_config` from the settings'
    one set of defaults."""

    model: str
    api_base: str | None
    api_key: str | None
    max_concurrency: int
    retries: int
    budget_usd: float | None
    budget_tokens: int | None
    rubric_version: str
    mode: Mode
    timeout_s: float
    backoff_s: float
    # Not a setting: room for one score and a sentence of reasoning per member of the largest group.
    max_tokens: int = 2048


@dataclass(slots=True)
class _Budget:
    limit_usd: float | None
    limit_tokens: int | None
    spent_usd: float = 0.0
    spent_tokens: int = 0
    reserved_usd: float = 0.0
    reserved_tokens: int = 0

    def reserve(self, tokens: int, dollars: float) -> None:
        if self.limit_tokens is not None and self.spent_tokens + self.reserved_tokens + tokens > self.limit_tokens:
            raise BudgetExhausted(
                f"judge token budget: {self.spent_tokens:,} spent + {self.reserved_tokens:,} in flight + about "
                f"{tokens:,} for this call would exceed JUDGE_BUDGET_TOKENS={self.limit_tokens:,}"
            )
        if self.limit_usd is not None and self.spent_usd + self.reserved_usd + dollars > self.limit_usd:
            raise BudgetExhausted(
                f"judge budget: ${self.spent_usd:.4f} spent + ${self.reserved_usd:.4f} in flight + about "
                f"${dollars:.4f} for this call would exceed JUDGE_BUDGET_USD=${self.limit_usd:.4f}"
            )
        self.reserved_tokens += tokens
        self.reserved_usd += dollars

    def settle(self, reserved_tokens: int, reserved_usd: float, tokens: int, dollars: float) -> None:
        self.reserved_tokens -= reserved_tokens
        self.reserved_usd -= reserved_usd
        self.spent_tokens += tokens
        self.spent_usd += dollars


@dataclass(slots=True)
class _Call:
    scores: dict[str, tuple[float, str]]  # by the trajectory label ("1".."n")
    tokens_in: int
    tokens_out: int
    dollars: float


@dataclass(slots=True)
class RulerRunStats:
    """What one `score` call did, beyond the usage."""

    cache_hits: int = 0
    identical_groups: int = 0
    sent_groups: int = 0
    retries: int = 0
    claims_waited: int = 0  # polls while another run judged the same group


# How often a judge waiting on another run's claim looks for its cached answer.
CLAIM_POLL_SECONDS = 0.5


def _labels(count: int) -> list[str]:
    return [str(i) for i in range(1, count + 1)]


SCORE_STEPS = tuple(round(i * 0.05, 2) for i in range(21))


def pinned_schema(labels: Sequence[str]) -> dict[str, Any]:
    """A JSON schema whose `scores` array has exactly one entry per label, in order, ids fixed as constants:
    a small model cannot repeat, skip or invent an id.

    Written for grammar-constrained decoding (llama.cpp turns it into a grammar): the score is an enum of
    0.00, 0.05 .. 1.00 because numeric minimum/maximum are not enforced by such grammars, the explanation is
    bounded, and the array's length is pinned with minItems/maxItems (`items: false` is refused there).
    """
    items = [
        {
            "type": "object",
            "properties": {
                "trajectory_id": {"const": label},
                "explanation": {"type": "string", "maxLength": 300},
                "score": {"enum": list(SCORE_STEPS)},
            },
            "required": ["trajectory_id", "explanation", "score"],
            "additionalProperties": False,
        }
        for label in labels
    ]
    return {
        "type": "object",
        "properties": {
            "scores": {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)}
        },
        "required": ["scores"],
        "additionalProperties": False,
    }


def pinned_response_format(labels: Sequence[str]) -> dict[str, Any]:
    """The response_format of a pinned call (OpenAI's json_schema form)."""
    return {
        "type": "json_schema",
        "json_schema": {"name": "ruler_scores", "schema": pinned_schema(labels), "strict": True},
    }


def ruler_style_messages(message_lists: Sequence[Sequence[dict[str, str]]], rubric: str) -> list[dict[str, str]]:
    """The pinned mode's prompt, built the way RULER builds its own: the messages every trajectory shares
    are sent once as context, then each trajectory's own messages, JSON-encoded, in a numbered block."""
    shared = 0
    first = message_lists[0]
    while shared < len(first) and all(len(m) > shared and m[shared] == first[shared] for m in message_lists):
        shared += 1
    parts = []
    if shared:
        parts.append("<context>\n" + json.dumps(list(first[:shared])) + "\n</context>")
    blocks = [
        f'<trajectory id="{label}">\n{json.dumps(list(messages[shared:]))}\n</trajectory>'
        for label, messages in zip(_labels(len(message_lists)), message_lists, strict=True)
    ]
    parts.append("Trajectories:\n\n" + "\n\n".join(blocks))
    instructions = (
        "Each trajectory below pursued the same goal in the same situation. Compare them and give each a score "
        "between 0 and 1, with a one-sentence explanation, following these grading standards:\n\n" + rubric
    )
    return [{"role": "system", "content": instructions}, {"role": "user", "content": "\n\n".join(parts)}]


def parse_scores(content: str, labels: Sequence[str]) -> dict[str, tuple[float, str]]:
    """Scores by label from a judge's JSON answer; BadJudgeAnswer unless exactly one valid score per label."""
    try:
        data = json.loads(content or "")
        entries = data["scores"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise BadJudgeAnswer(f"not a JSON object with a 'scores' list ({type(error).__name__})") from None
    found: dict[str, tuple[float, str]] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            raise BadJudgeAnswer("a score entry is not an object")
        label = str(entry.get("trajectory_id", "")).strip()
        if label in found:
            raise BadJudgeAnswer(f"trajectory {label} scored twice")
        if label not in labels:
            raise BadJudgeAnswer(f"unknown trajectory id {label!r}")
        try:
            score = float(entry["score"])
        except (KeyError, TypeError, ValueError):
            raise BadJudgeAnswer(f"trajectory {label} has no numeric score") from None
        if not (math.isfinite(score) and 0.0 <= score <= 1.0):
            raise BadJudgeAnswer(f"trajectory {label} scored {score}, outside [0, 1]")
        found[label] = (score, str(entry.get("explanation", "")))
    missing = [label for label in labels if label not in found]
    if missing:
        raise BadJudgeAnswer(f"no score for trajectory {', '.join(missing)} ({len(found)} of {len(labels)} scored)")
    return found


@functools.lru_cache(maxsize=64)
def model_prices(model: str) -> tuple[float, float] | None:
    """Dollars per prompt and per completion token of `model` from litellm's cost table (the bundled copy:
    LITELLM_LOCAL_MODEL_COST_MAP), or None when it is not priced (a local model). Cached: litellm's lookup of
    an unknown model takes tens of milliseconds."""
    import litellm

    try:
        prompt_cost, _ = litellm.cost_per_token(model=model, prompt_tokens=1_000_000, completion_tokens=0)
        _, completion_cost = litellm.cost_per_token(model=model, prompt_tokens=0, completion_tokens=1_000_000)
    except Exception:  # noqa: BLE001 - litellm raises for models it has no price for
        return None
    return prompt_cost / 1_000_000, completion_cost / 1_000_000


class _TransientUpstream(Exception):
    """A 429, a 5xx, a timeout or a lost connection from the judge: worth another try."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _retry_after_s(error: BaseException) -> float | None:
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) or getattr(error, "litellm_response_headers", None) or {}
    return _seconds(headers.get("retry-after") if hasattr(headers, "get") else None)


class RulerJudge:
    """RULER behind the judge interface: relative scores in [0, 1] for each group, from an LLM judge that sees
    the window's ground truth."""

    is_llm = True
    name = "ruler"

    def __init__(self, config: RulerConfig, cache: JudgeCache | None = None) -> None:
        self.config = config
        self.cache = cache
        self.rubric = rubric_text(config.rubric_version)
        self.budget = _Budget(config.budget_usd, config.budget_tokens)
        self.stats = RulerRunStats()
        # Who holds a claim on a group while paying for it (this process, this judge).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._session: aiohttp.ClientSession | None = None
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

    @property
    def version(self) -> str:
        """Judge model + rubric version (+ call mode): what a cached or stored score was made with."""
        return f"ruler:{self.config.model}:{self.config.rubric_version}:{self.config.mode}"

    # -- one group ------------------------------------------------------------------------------

    def cache_key(self, message_lists: Sequence[Sequence[dict[str, str]]]) -> str:
        """Hash of (judge view, judge model, rubric version, mode)."""
        payload = json.dumps(
            {
                "views": message_lists,
                "model": self.config.model,
                "rubric": self.config.rubric_version,
                "mode": self.config.mode,
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    @property
    def prices(self) -> tuple[float, float] | None:
        """Dollars per prompt and per completion token from litellm's cost table, or None when unpriced."""
        return model_prices(self.config.model)

    def _dollars(self, tokens_in: int, tokens_out: int) -> float:
        prices = self.prices
        return 0.0 if prices is None else tokens_in * prices[0] + tokens_out * prices[1]

    def _estimate(self, messages: Sequence[dict[str, str]]) -> tuple[int, float]:
        tokens_in = sum(len(m["content"]) for m in messages) // 3 + 64  # a generous chars-per-token estimate
        return tokens_in + self.config.max_tokens, self._dollars(tokens_in, self.config.max_tokens)

    def _litellm_params(self) -> dict[str, Any]:
        return {
            "api_base": self.config.api_base,
            "api_key": self.config.api_key or PLACEHOLDER_API_KEY,
            "timeout": self.config.timeout_s,
            "max_tokens": self.config.max_tokens,
            "num_retries": 0,  # retries are ours: they honour Retry-After and re-validate the answer
        }

    async def _call_pinned(self, message_lists: Sequence[Sequence[dict[str, str]]]) -> _Call:
        import litellm

        labels = _labels(len(message_lists))
        messages = ruler_style_messages(message_lists, self.rubric)
        if self._session is not None:
            return await self._post_openai_compatible(messages, labels)
        response = await litellm.acompletion(
            model=self.config.model,
            messages=messages,
            response_format=pinned_response_format(labels),
            **self._litellm_params(),
        )
        content = response.choices[0].message.content or ""
        usage = getattr(response, "usage", None)
        tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
        tokens_out = int(getattr(usage, "completion_tokens", 0) or 0)
        return _Call(parse_scores(content, labels), tokens_in, tokens_out, self._dollars(tokens_in, tokens_out))

    async def _post_openai_compatible(self, messages: list[dict[str, str]], labels: list[str]) -> _Call:
        """The pinned call to a judge that speaks OpenAI's protocol itself (an `openai/...` model at an API base),
        on one shared aiohttp session: litellm's per-call work would cap throughput on a small machine."""
        assert self._session is not None
        url = f"{(self.config.api_base or '').rstrip('/')}/chat/completions"
        payload = {
            "model": self.config.model.split("/", 1)[1],
            "messages": messages,
            "max_tokens": self.config.max_tokens,
            "response_format": pinned_response_format(labels),
        }
        headers = {"Authorization": f"Bearer {self.config.api_key or PLACEHOLDER_API_KEY}"}
        try:
            async with self._session.post(
                url, json=payload, headers=headers, timeout=aiohttp.ClientTimeout(total=self.config.timeout_s)
            ) as response:
                text = await response.text()
                if response.status == 429 or response.status >= 500:
                    raise _TransientUpstream(f"HTTP {response.status}", _seconds(response.headers.get("Retry-After")))
                if response.status != 200:
                    raise RuntimeError(f"the judge answered HTTP {response.status}: {text[:300]}")
        except (aiohttp.ClientError, TimeoutError) as error:
            raise _TransientUpstream(f"{type(error).__name__}: {error}", None) from None
        data = json.loads(text)
        usage = data.get("usage") or {}
        tokens_in, tokens_out = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        content = data["choices"][0]["message"].get("content") or ""
        return _Call(parse_scores(content, labels), tokens_in, tokens_out, self._dollars(tokens_in, tokens_out))

    async def _call_art(self, message_lists: Sequence[Sequence[dict[str, str]]]) -> _Call:
        from art.rewards.ruler import ruler

        labels = _labels(len(message_lists))
        tag = uuid.uuid4().hex
        _UsageLog.install()
        scores = await ruler(
            [list(m) for m in message_lists],  # type: ignore[misc,arg-type]
            judge_model=self.config.model,
            extra_litellm_params={**self._litellm_params(), "metadata": {"babylon_call": tag}},
            rubric=self.rubric,
        )
        content = json.dumps({"scores": [s.model_dump() for s in scores]})
        tokens_in, tokens_out = await _UsageLog.pop(tag)
        return _Call(parse_scores(content, labels), tokens_in, tokens_out, self._dollars(tokens_in, tokens_out))

    async def _judge_with_retries(self, group: JudgeGroup, message_lists: list[list[dict[str, str]]]) -> _Call:
        import litellm

        call = self._call_pinned if self.config.mode == "pinned" else self._call_art
        estimate_tokens, estimate_dollars = self._estimate(ruler_style_messages(message_lists, self.rubric))
        problems: list[str] = []
        for attempt in range(self.config.retries + 1):
            self.budget.reserve(estimate_tokens, estimate_dollars)
            spent_tokens, spent_dollars = 0, 0.0
            try:
                result = await call(message_lists)
                spent_tokens, spent_dollars = result.tokens_in + result.tokens_out, result.dollars
                return result
            except BadJudgeAnswer as error:
                problems.append(f"attempt {attempt + 1}: bad answer: {error}")
                delay = self.config.backoff_s * 2**attempt
            except (
                litellm.RateLimitError,
                litellm.Timeout,
                litellm.APIConnectionError,
                litellm.ServiceUnavailableError,
                litellm.InternalServerError,
                _TransientUpstream,
            ) as error:
                retry_after = error.retry_after if isinstance(error, _TransientUpstream) else _retry_after_s(error)
                problems.append(
                    f"attempt {attempt + 1}: {type(error).__name__}"
                    + (f" (Retry-After {retry_after:g}s)" if retry_after is not None else "")
                )
                delay = retry_after if retry_after is not None else self.config.backoff_s * 2**attempt
            except Exception as error:  # noqa: BLE001 - ART's ruler raises plain errors on answers it cannot read
                problems.append(f"attempt {attempt + 1}: {type(error).__name__}: {str(error)[:200]}")
                delay = self.config.backoff_s * 2**attempt
            finally:
                self.budget.settle(estimate_tokens, estimate_dollars, spent_tokens, spent_dollars)
            if attempt < self.config.retries:
                self.stats.retries += 1
                await asyncio.sleep(delay * (1 + random.random() * 0.1))
        raise RuntimeError(
            f"group {group.group_id}: the judge gave no valid answer after "
            f"{self.config.retries + 1} attempts: " + "; ".join(problems)
        )

    async def _score_group(self, group: JudgeGroup, semaphore: asyncio.Semaphore, result: JudgeResult) -> None:
        members = sorted(group.members, key=lambda aw: aw.agent_window_id)
        views = [decision_conversations(aw) for aw in members]
        if len(members) > 1 and all(view == views[0] for view in views):
            self.stats.identical_groups += 1
            for aw in members:
                result.scores[aw.agent_window_id] = Judgment(
                    0.5, "not sent to the judge: every trajectory of the group is identical (left out of training)"
                )
            return
        message_lists = [judge_messages(aw, self.rubric, group.outcomes) for aw in members]
        key = self.cache_key(message_lists)
        # The claim is taken once this call may start (inside the semaphore), so the stale bound, which counts
        # from the claim, covers the call itself and not the wait for a free slot.
        async with semaphore:
            cached = await self._cached_or_claimed(group, key, [aw.agent_window_id for aw in members])
            if cached is not None:
                self.stats.cache_hits += 1
                for aw in members:
                    score, reasoning = cached.scores[aw.agent_window_id]
                    result.scores[aw.agent_window_id] = Judgment(score, reasoning)
                return
            try:
                call = await self._judge_with_retries(group, message_lists)
                self._record_call(group, members, key, call, result)
            finally:
                if self.cache is not None:
                    self.cache.release_judgment(key, self.owner)

    async def _cached_or_claimed(self, group: JudgeGroup, key: str, members: list[str]) -> CachedJudgment | None:
        """The cached judgment of these members, or None once this judge holds the claim to make it: while another
        run judges the same group, wait for its answer rather than pay for the group twice. A cached answer that
        lacks a member (its id changed since: another row stitched in) is no answer."""
        if self.cache is None:
            return None

        def usable(found: CachedJudgment | None) -> CachedJudgment | None:
            return found if found is not None and all(m in found.scores for m in members) else None

        # Long enough for every attempt of the other run's call; a claim older than that was left by a dead run.
        stale_after = (self.config.timeout_s + self.config.backoff_s * 2**self.config.retries) * (
            self.config.retries + 1
        )
        deadline = time.monotonic() + stale_after + CLAIM_POLL_SECONDS
        while True:
            cached = usable(self.cache.cached_judgment(key))
            if cached is not None:
                return cached
            # A claim of a process that is gone (killed mid-call) is taken over at once, not after the stale bound.
            bound = -1.0 if _holder_is_gone(self.cache.claim_holder(key)) else stale_after
            if self.cache.claim_judgment(key, self.owner, bound):
                # Cached between our look and our claim: use it and give the claim back.
                cached = usable(self.cache.cached_judgment(key))
                if cached is not None:
                    self.cache.release_judgment(key, self.owner)
                return cached
            if time.monotonic() > deadline:
                raise RuntimeError(f"group {group.group_id}: another run has held it for {stale_after:.0f} s")
            self.stats.claims_waited += 1
            await asyncio.sleep(CLAIM_POLL_SECONDS)

    def _record_call(
        self, group: JudgeGroup, members: list[AgentWindow], key: str, call: _Call, result: JudgeResult
    ) -> None:
        self.stats.sent_groups += 1
        by_id = {
            aw.agent_window_id: call.scores[label] for label, aw in zip(_labels(len(members)), members, strict=True)
        }
        for agent_window_id, (score, reasoning) in by_id.items():
            result.scores[agent_window_id] = Judgment(score, reasoning)
        usage = result.usage
        usage.calls += 1
        usage.tokens_in += call.tokens_in
        usage.tokens_out += call.tokens_out
        usage.dollars += call.dollars
        window = result.usage_by_window.setdefault(group.window_id, JudgeUsage())
        window.calls += 1
        window.tokens_in += call.tokens_in
        window.tokens_out += call.tokens_out
        window.dollars += call.dollars
        if self.cache is not None:
            self.cache.cache_judgment(
                key, self.version, group.window_id, group.group_id, by_id, call.tokens_in, call.tokens_out, call.dollars
            )

    async def score(self, groups: Sequence[JudgeGroup]) -> JudgeResult:
        """Score every group concurrently (at most JUDGE_MAX_CONCURRENCY calls in flight); a group that fails
        after its retries is reported in `failures` and costs the others nothing."""
        result = JudgeResult(scores={}, usage=JudgeUsage())
        semaphore = asyncio.Semaphore(self.config.max_concurrency)

        async def one(group: JudgeGroup) -> None:
            try:
                await self._score_group(group, semaphore, result)
            except (RuntimeError, BudgetExhausted) as error:
                result.failures[group.group_id] = str(error)

        direct = self.config.mode == "pinned" and speaks_openai(self.config.model, self.config.api_base)
        if direct:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            await asyncio.gather(*(one(group) for group in groups))
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None
        return result


class _UsageLog:
    """Token usage of ART's own litellm calls, collected through a litellm callback by a per-call tag."""

    _usage: dict[str, tuple[int, int]] = {}
    _installed = False

    @classmethod
    def install(cls) -> None:
        if cls._installed:
            return
        import litellm
        from litellm.integrations.custom_logger import CustomLogger

        class Collector(CustomLogger):  # type: ignore[misc]
            async def async_log_success_event(
                self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
            ) -> None:
                tag = ((kwargs.get("litellm_params") or {}).get("metadata") or {}).get("babylon_call")
                usage = getattr(response_obj, "usage", None)
                if tag and usage is not None:
                    cls._usage[tag] = (int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0))

        litellm.callbacks = [*litellm.callbacks, Collector()]
        cls._installed = True

    @classmethod
    async def pop(cls, tag: str, wait_s: float = 2.0) -> tuple[int, int]:
        # litellm runs success callbacks in a task of their own, just after the call returns.
        deadline = asyncio.get_running_loop().time() + wait_s
        while tag not in cls._usage and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        return cls._usage.pop(tag, (0, 0))
