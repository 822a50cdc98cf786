"""The gateway's ASGI app: OpenAI-compatible chat completions, forwarded to the deployed model, recorded.

A small Starlette app rather than litellm's proxy: the proxy is a service of its own with its own database
and auth, while recording into the game's tables and stitching calls into agent-hours must sit beside our
store. Where the upstream speaks OpenAI's protocol itself (an `openai/...` model at an API base: the local
llama.cpp server, vLLM, ART's endpoints) the request is passed through byte for byte on one shared aiohttp
session, so the agent gets the upstream's answer and errors unchanged and the gateway adds a few
milliseconds; any other provider goes through `litellm.acompletion`, which translates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from babylon_assets.core.window_time import Clock, as_utc, utcnow
from babylon_assets.gateway.auth import GatewayKeys
from babylon_assets.gateway.recording import CallRecord, GatewayRecorder
from babylon_assets.llm.openai_compat import PLACEHOLDER_API_KEY, speaks_openai
from babylon_assets.settings import Settings, get_settings

AGENT_HEADER = "X-Babylon-Agent"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Upstream:
    """The model that answers (the deployed one): a litellm model string, its base URL and key, its version."""

    model: str
    api_base: str | None = None
    api_key: str | None = None
    version: str | None = None


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(str(part.get("text") or "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _prompts(messages: list[dict[str, Any]]) -> tuple[str, str]:
    system = "\n\n".join(_text(m.get("content")) for m in messages if m.get("role") == "system")
    users = [m for m in messages if m.get("role") == "user"]
    return system, _text(users[-1].get("content")) if users else ""


def _logprobs(choice: Any) -> list[dict[str, Any]] | None:
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    return [_token(item) for item in content]


def _token(item: Any) -> dict[str, Any]:
    """One sampled token as recorded: its text, its logprob and, where the engine reports it (llama.cpp does), its id,
    so the trainer learns on the very tokens that were sampled instead of a re-tokenization of the text."""
    recorded: dict[str, Any] = {"token": _get(item, "token"), "logprob": float(_get(item, "logprob"))}
    token_id = _get(item, "id")
    if isinstance(token_id, int) and not isinstance(token_id, bool):
        recorded["id"] = token_id
    return recorded


# What a call's body said about how to sample, recorded with the call (the trainer applies its temperature; the
# schema tells which answers were possible).
_SAMPLING_OPTIONS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "response_format",
)
_MAX_NOTE_CHARS = 1_000


def _get(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def _sse_payloads(buffer: bytearray) -> Iterator[dict[str, Any]]:
    """Complete `data: {...}` events taken off the front of a byte buffer of server-sent events."""
    while (end := buffer.find(b"\n")) >= 0:
        line = bytes(buffer[:end]).strip()
        del buffer[: end + 1]
        if line.startswith(b"data:") and line[5:].strip() not in (b"", b"[DONE]"):
            try:
                yield json.loads(line[5:])
            except json.JSONDecodeError:
                continue


def passes_through(target: Upstream) -> bool:
    """An upstream that speaks OpenAI's protocol itself: forwarded byte for byte."""
    return speaks_openai(target.model, target.api_base)


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """How much one call may carry and how often a key may call (GATEWAY_* settings)."""

    max_body_bytes: int
    rate_limit: float  # calls per second per key; 0: no limit
    upstream_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewayLimits:
        """The limits these settings name."""
        return cls(
            settings.GATEWAY_MAX_BODY_BYTES, settings.GATEWAY_RATE_LIMIT, settings.GATEWAY_UPSTREAM_TIMEOUT_SECONDS
        )


_ROLES = {"system", "user", "assistant", "tool", "developer"}
# What the litellm path forwards of a caller's body: OpenAI's sampling and format options, nothing of litellm's own
# (`base_url` or `mock_response` would send the upstream's key elsewhere, or record the caller's text as the model's).
_FORWARDED_OPTIONS = {
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "n",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "user",
}
# The agent state a caller may report: numbers a person's account can hold.
_MAX_STATE_VALUE = 1e15


def _invalid_field(body: Any) -> str | None:
    """What is wrong with a chat request, naming the field, or None: checked before anything is forwarded."""
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{index}] must be an object"
        if message.get("role") not in _ROLES:
            return f"messages[{index}].role must be one of {', '.join(sorted(_ROLES))}"
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            return f"messages[{index}].content must be a string or a list of parts"
    for name in ("temperature", "top_p"):
        if name in body and (isinstance(body[name], bool) or not isinstance(body[name], (int, float))):
            return f"{name} must be a number"
    if "max_tokens" in body and (isinstance(body["max_tokens"], bool) or not isinstance(body["max_tokens"], int)):
        return "max_tokens must be an integer"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream must be true or false"
    state = body.get("babylon")
    if state is not None:
        if not isinstance(state, dict):
            return "babylon must be an object"
        if "at" in state:
            if not isinstance(state["at"], str):
                return "babylon.at must be an ISO 8601 time"
            try:
                datetime.fromisoformat(state["at"])
            except ValueError:
                return "babylon.at must be an ISO 8601 time"
        if "note" in state and (not isinstance(state["note"], str) or len(state["note"]) > _MAX_NOTE_CHARS):
            return f"babylon.note must be a string of at most {_MAX_NOTE_CHARS} characters"
        for name, value in state.items():
            if name in ("at", "evaluation", "note"):
                continue
            if isinstance(value, bool) or (
                isinstance(value, (int, float)) and not (math.isfinite(value) and abs(value) <= _MAX_STATE_VALUE)
            ):
                return f"babylon.{name} must be a finite number"
    return None


class _RateLimiter:
    """One token bucket per key: `rate` calls a second, bursts of up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key_id: str) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        tokens, last = self._buckets.get(key_id, (max(1.0, self.rate), now))
        tokens = min(max(1.0, self.rate), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key_id] = (tokens, now)
            return False
        self._buckets[key_id] = (tokens - 1.0, now)
        return True


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None once it passes `limit` bytes (read no further: a huge body costs nothing)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    received = bytearray()
    async for chunk in request.stream():
        received.extend(chunk)
        if len(received) > limit:
            return None
    return bytes(received)


def create_app(
    upstream: Callable[[], Upstream],
    recorder: GatewayRecorder,
    clock: Clock = utcnow,
    *,
    keys: GatewayKeys,
    limits: GatewayLimits | None = None,
) -> Starlette:
    """The gateway app; `upstream` is asked on every call (a deploy switches it at once); only callers with a key
    that speaks for the calling agent get through (`keys`), nothing is forwarded or recorded for the others."""
    http: dict[str, aiohttp.ClientSession] = {}
    limits = limits or GatewayLimits.from_settings(get_settings())
    rates = _RateLimiter(limits.rate_limit)

    async def chat_completions(request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # In a thread: a key not seen lately is looked up in the store, which must not hold up the other calls.
        grant = await asyncio.to_thread(keys.verify, token.strip()) if scheme.lower() == "bearer" else None
        if grant is None:
            return _error(401, "a valid gateway key is needed: send it as the api_key (Bearer)", "authentication_error")
        agent_id = request.headers.get(AGENT_HEADER, "").strip()
        if not agent_id:
            return _error(
                400,
                f"name the calling agent with the {AGENT_HEADER} header (its game agentId)",
                "invalid_request_error",
            )
        if not grant.speaks_for(agent_id):
            return _error(403, f"this key does not speak for agent {agent_id!r}", "permission_error")
        if not rates.allow(grant.key_id):
            return _error(429, f"more than {limits.rate_limit:g} calls a second with this key", "rate_limit_error")
        raw = await _read_limited(request, limits.max_body_bytes)
        if raw is None:
            return _error(
                413, f"the body is over GATEWAY_MAX_BODY_BYTES={limits.max_body_bytes}", "invalid_request_error"
            )
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the request body is not JSON", "invalid_request_error")
        problem = _invalid_field(body)
        if problem is not None:
            return _error(400, problem, "invalid_request_error")
        messages = body.pop("messages")
        agent_state = body.pop("babylon", None) or {}
        if "at" in agent_state and not grant.may_set_clock:
            return _error(403, "this key may not set the simulated clock (babylon.at)", "permission_error")
        if agent_state.get("evaluation") and not grant.may_mark_evaluation:
            return _error(403, "this key may not mark play held out (babylon.evaluation)", "permission_error")
        reported_at = agent_state.pop("at", None)
        held_out = bool(agent_state.pop("evaluation", False))
        note = agent_state.pop("note", None)
        sampling = {name: body[name] for name in _SAMPLING_OPTIONS if name in body}
        body.pop("model", None)  # the gateway decides who answers: the deployed model
        target = upstream()
        stream = bool(body.pop("stream", False))
        # Ask for token logprobs (off-policy training needs them) unless the agent said otherwise.
        added_logprobs = "logprobs" not in body
        body.setdefault("logprobs", True)
        started = time.perf_counter()
        # A simulator's agents report their simulated time; the game's agents play in real time.
        at = as_utc(datetime.fromisoformat(reported_at)) if reported_at else clock()

        def record(content: str, usage: Any, logprobs: list[dict[str, Any]] | None, model: str | None) -> None:
            system, user = _prompts(messages)
            recorder.submit(
                CallRecord(
                    call_id=uuid.uuid4().hex,
                    agent_id=agent_id,
                    at=at,
                    model=target.model,
                    model_version=target.version or model,
                    system_prompt=system,
                    user_prompt=user,
                    messages=messages,
                    response=content,
                    temperature=float(body.get("temperature", 1.0)),
                    max_tokens=int(body.get("max_tokens") or 0),
                    latency_ms=(time.perf_counter() - started) * 1000,
                    prompt_tokens=_get(usage, "prompt_tokens"),
                    completion_tokens=_get(usage, "completion_tokens"),
                    logprobs=logprobs,
                    agent_state={k: float(v) for k, v in agent_state.items() if isinstance(v, (int, float))},
                    is_evaluation=held_out,
                    sampling=sampling,
                    note=note,
                )
            )

        # A whole answer is recorded only if its caller is still there to get it: an abandoned call is counted,
        # never recorded as play. (A stream records at its end, which an abandoned stream never reaches.)
        answered: list[tuple[str, Any, list[dict[str, Any]] | None, str | None]] = []

        def keep(content: str, usage: Any, logprobs: list[dict[str, Any]] | None, model: str | None) -> None:
            answered.append((content, usage, logprobs, model))

        async def record_unless_abandoned() -> None:
            if not answered:
                return
            if await request.is_disconnected():
                recorder.counters.abandoned += 1
            else:
                record(*answered[-1])

        if passes_through(target):
            response = await forward(target, messages, body, stream, record if stream else keep)
            if response.status_code == 400 and added_logprobs and b"logprob" in bytes(response.body or b""):
                # An upstream that offers no logprobs: the agent did not ask for them, so ask again without.
                body.pop("logprobs")
                response = await forward(target, messages, body, stream, record if stream else keep)
            await record_unless_abandoned()
            return response
        import litellm

        try:
            answer = await litellm.acompletion(
                model=target.model,
                api_base=target.api_base,
                api_key=target.api_key or PLACEHOLDER_API_KEY,
                messages=messages,
                stream=stream,
                num_retries=0,
                timeout=limits.upstream_timeout_s,
                **{name: value for name, value in body.items() if name in _FORWARDED_OPTIONS},
            )
        except Exception as error:  # noqa: BLE001 - the upstream's error goes back to the agent as it came
            status = int(getattr(error, "status_code", 502) or 502)
            return _error(status, str(getattr(error, "message", error)), type(error).__name__)

        if not stream:
            choice = answer.choices[0]
            keep(
                choice.message.content or "",
                getattr(answer, "usage", None),
                _logprobs(choice),
                getattr(answer, "model", None),
            )
            await record_unless_abandoned()
            return JSONResponse(answer.model_dump(exclude_none=True))

        async def relay() -> AsyncIterator[bytes]:
            parts: list[str] = []
            logprobs: list[dict[str, Any]] = []
            usage = None
            async for chunk in answer:
                if chunk.choices:
                    delta = chunk.choices[0].delta
                    parts.append(getattr(delta, "content", None) or "")
                    logprobs.extend(_logprobs(chunk.choices[0]) or [])
                usage = getattr(chunk, "usage", None) or usage
                yield f"data: {chunk.model_dump_json(exclude_none=True)}\n\n".encode()
            yield b"data: [DONE]\n\n"
            record("".join(parts), usage, logprobs or None, None)

        return StreamingResponse(relay(), media_type="text/event-stream")

    async def forward(
        target: Upstream,
        messages: list[dict[str, Any]],
        body: dict[str, Any],
        stream: bool,
        record: Callable[[str, Any, list[dict[str, Any]] | None, str | None], None],
    ) -> Response:
        session = http["session"]
        url = f"{(target.api_base or '').rstrip('/')}/chat/completions"
        payload = {**body, "model": target.model.split("/", 1)[1], "messages": messages, "stream": stream}
        headers = {"Authorization": f"Bearer {target.api_key or PLACEHOLDER_API_KEY}"}
        try:
            answer = await session.post(url, json=payload, headers=headers)
        except (aiohttp.ClientError, TimeoutError) as error:
            return _error(
                502, f"the upstream at {url} did not answer: {type(error).__name__}: {error}", "api_connection_error"
            )
        media_type = answer.headers.get("content-type", "application/json")
        if not stream or answer.status != 200:
            try:
                content = await answer.read()
            except (aiohttp.ClientError, TimeoutError) as error:
                return _error(
                    502,
                    f"the upstream at {url} broke off its answer: {type(error).__name__}: {error}",
                    "api_connection_error",
                )
            finally:
                answer.release()
            if answer.status == 200:
                try:
                    data = json.loads(content)
                    choice = data["choices"][0]
                    logprobs = (choice.get("logprobs") or {}).get("content")
                    parsed = (
                        choice["message"].get("content") or "",
                        data.get("usage"),
                        [_token(t) for t in logprobs] if logprobs else None,
                        data.get("model"),
                    )
                except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
                    # The agent still gets the answer as it came; what cannot be read is counted, never a 500.
                    recorder.counters.unreadable += 1
                    log.warning(
                        "an upstream answer could not be read for recording: %s: %s", type(error).__name__, error
                    )
                else:
                    record(*parsed)
            # The upstream's answer, errors included, exactly as it came.
            return Response(content, status_code=answer.status, media_type=media_type.split(";")[0])

        async def relay() -> AsyncIterator[bytes]:
            buffer = bytearray()
            parts: list[str] = []
            logprobs: list[dict[str, Any]] = []
            usage = model = None
            try:
                async for raw in answer.content.iter_any():
                    yield raw
                    buffer.extend(raw)
                    for event in _sse_payloads(buffer):
                        model = event.get("model", model)
                        usage = event.get("usage") or usage
                        for choice in event.get("choices") or []:
                            parts.append((choice.get("delta") or {}).get("content") or "")
                            logprobs.extend(_token(t) for t in ((choice.get("logprobs") or {}).get("content") or []))
            finally:
                answer.release()
            record("".join(parts), usage, logprobs or None, model)

        return StreamingResponse(relay(), status_code=200, media_type=media_type.split(";")[0])

    async def health(_: Request) -> Response:
        counters = recorder.counters
        return JSONResponse(
            {
                "status": "ok",
                "upstream": upstream().model,
                "pending": recorder.queue.qsize(),
                "recorded": counters.recorded,
                "failed_attempts": counters.failed_attempts,
                "quarantined": counters.quarantined,
                "abandoned": counters.abandoned,
                "spooled": counters.spooled,
                "replayed": counters.replayed,
            }
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        recorder.start()
        # aiohttp, not httpx: its connection pool stays fast with hundreds of calls in flight.
        http["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=limits.upstream_timeout_s, connect=10),
        )
        try:
            yield
        finally:
            await http.pop("session").close()
            await recorder.stop()  # what is queued is written before the gateway goes

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/chat/completions", chat_completions, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
