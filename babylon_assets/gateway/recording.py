"""Recording the gateway's calls into the agent's trajectory for the hour, off the request path.

The agent's call never waits on the store: records go into a queue, a background task writes them, a
write that fails is retried with backoff (and counted), and a call is written at most once (its callId).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DataError, DBAPIError, StatementError

from babylon_assets.core.trajectory import Action, EnvironmentState, LlmCall, Step
from babylon_assets.core.window_time import Clock, as_utc, utcnow, window_id_of
from babylon_assets.db.engine import naive_utc
from babylon_assets.db.play_records import PlayRecords
from babylon_assets.db.store import Store, StoreError

log = logging.getLogger(__name__)


def refused_for_content(error: BaseException) -> bool:
    """Whether the store refused a call for what it holds (a NUL in a text column, bad bytes), where retrying cannot
    help, rather than being unreachable, where it can."""
    if isinstance(error, DataError):
        return True
    cause = error.orig if isinstance(error, StatementError) else error
    return isinstance(cause, (ValueError, UnicodeError, ArithmeticError, TypeError)) and not isinstance(
        cause, DBAPIError
    )


def gateway_trajectory_id(agent_id: str, window_id: str) -> str:
    """The gateway's trajectory of an agent's hour, created by its first call."""
    return f"gw-{agent_id}-{window_id}"


@dataclass(slots=True)
class CallRecord:
    """One call through the gateway, as it will be stored."""

    call_id: str
    agent_id: str
    at: datetime
    model: str
    model_version: str | None
    system_prompt: str
    user_prompt: str
    messages: list[dict[str, Any]]
    response: str
    temperature: float
    max_tokens: int
    latency_ms: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    logprobs: list[dict[str, Any]] | None = None
    agent_state: dict[str, float] = field(default_factory=dict)
    action_type: str = "RESPONSE"
    is_evaluation: bool = False  # held-out play: its trajectory is never training data
    sampling: dict[str, Any] = field(default_factory=dict)  # temperature, sampler and response_format as asked
    note: str | None = None  # the agent's word on the call (a refused schema, asked again without it)

    @property
    def window_id(self) -> str:
        """The UTC hour of the call: the agent-window it extends."""
        return window_id_of(self.at)

    @property
    def trajectory_id(self) -> str:
        """The agent's trajectory for the hour, created by its first call."""
        return gateway_trajectory_id(self.agent_id, self.window_id)

    def step(self, number: int) -> Step:
        """The call as a step of the game's stepsJson."""
        return Step(
            stepNumber=number,
            timestamp=int(as_utc(self.at).timestamp() * 1000),
            environmentState=EnvironmentState(
                agentBalance=float(self.agent_state.get("balance", 0.0)),
                agentPnL=float(self.agent_state.get("pnl", 0.0)),
                openPositions=int(self.agent_state.get("openPositions", 0)),
            ),
            llmCalls=[
                LlmCall(
                    model=self.model,
                    modelVersion=self.model_version,
                    systemPrompt=self.system_prompt,
                    userPrompt=self.user_prompt,
                    response=self.response,
                    temperature=self.temperature,
                    maxTokens=self.max_tokens,
                    latencyMs=self.latency_ms,
                    purpose="action",
                    actionType=self.action_type,
                )
            ],
            action=Action(actionType=self.action_type, success=True),
            reward=0.0,
        )

    def call_row(self, step_number: int) -> dict[str, Any]:
        """The call's llm_call_logs row."""
        total = (
            None
            if self.prompt_tokens is None or self.completion_tokens is None
            else self.prompt_tokens + self.completion_tokens
        )
        return {
            "id": self.call_id,
            "trajectoryId": self.trajectory_id,
            "stepId": f"{self.trajectory_id}:{step_number}",
            "callId": self.call_id,
            "timestamp": naive_utc(self.at),
            "latencyMs": int(self.latency_ms),
            "model": self.model,
            "purpose": "action",
            "actionType": self.action_type,
            "systemPrompt": self.system_prompt,
            "userPrompt": self.user_prompt,
            "messagesJson": json.dumps(self.messages),
            "response": self.response,
            "temperature": self.temperature,
            "maxTokens": self.max_tokens,
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "totalTokens": total,
            "metadata": self.metadata_json(),
        }

    def to_json(self) -> str:
        """The whole record as one JSON line (text escaped as JSON escapes it: a NUL is kept, as \\u0000)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["at"] = as_utc(self.at).isoformat()
        return json.dumps(data)

    @classmethod
    def from_json(cls, line: str) -> CallRecord:
        """A record written by `to_json`."""
        data = json.loads(line)
        data["at"] = datetime.fromisoformat(data["at"])
        return cls(**data)

    def metadata_json(self) -> str:
        """llm_call_logs.metadata: the model version, the sampled tokens (text, logprob, id), how they were sampled."""
        metadata: dict[str, Any] = {"modelVersion": self.model_version, "logprobs": self.logprobs, "source": "gateway"}
        if self.sampling:
            metadata["sampling"] = self.sampling
        if self.note:
            metadata["note"] = self.note
        return json.dumps(metadata)


@dataclass(slots=True)
class RecorderCounters:
    """What the recorder did, for a person and for tests."""

    recorded: int = 0
    duplicates: int = 0
    failed_attempts: int = 0
    rejected: int = 0
    abandoned: int = 0  # answered after the caller had gone: not recorded as play
    unreadable: int = 0  # upstream answers passed on unchanged that could not be read for recording
    quarantined: int = 0  # refused by the store for their content: kept whole in quarantined_gateway_calls
    spooled: int = 0  # left in the queue at shutdown: written to the spool file for the next start
    replayed: int = 0  # read back from the spool file at start


class GatewayRecorder:
    """A queue of calls and the task that writes them to the store."""

    def __init__(
        self,
        store: Store,
        *,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        close_every_s: float = 30.0,
        clock: Clock = utcnow,
        max_batch: int = 256,
        spool_file: Path | None = None,
    ) -> None:
        self.store = store
        self.spool_file = spool_file
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.close_every_s = close_every_s
        self.max_batch = max_batch
        self.clock = clock
        self.counters = RecorderCounters()
        self.queue: asyncio.Queue[CallRecord] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight: list[CallRecord] = []

    def submit(self, record: CallRecord) -> None:
        """Queue a call for recording; never blocks the agent's call."""
        self.queue.put_nowait(record)

    def start(self) -> None:
        """Start the writer task, and the task that closes ended hours, on the running loop; calls a previous
        run spooled at its shutdown are queued first."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._replay_spool()
        if self._task is None:
            self._task = loop.create_task(self._run())
        if self._closer is None:
            self._closer = loop.create_task(self._close_ended_hours())

    async def _close_ended_hours(self) -> None:
        # The closing snapshot of the game's accounts, once an agent's hour has ended.
        while True:
            await asyncio.sleep(self.close_every_s)
            try:
                await asyncio.to_thread(PlayRecords(self.store).close_gateway_windows, window_id_of(self.clock()))
            except Exception as error:  # noqa: BLE001 - tried again at the next round
                log.warning("closing ended gateway hours failed: %s", error)

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued call is written (or the timeout passes)."""
        await asyncio.wait_for(self.queue.join(), timeout_s)

    def drain_from_thread(self, timeout_s: float = 30.0) -> None:
        """drain(), called from another thread than the gateway's (a gateway served in a thread)."""
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.drain(timeout_s), self._loop).result(timeout_s + 5)

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Write what is queued, then stop; what cannot be written in time (the store is down) goes to the spool
        file, so nothing answered is lost."""
        if self._task is not None:
            try:
                await self.drain(drain_timeout_s)
            except TimeoutError:
                log.warning("the store did not take the queued calls in %.0f s: spooling them", drain_timeout_s)
            finally:
                self._task.cancel()
                self._task = None
                if self._closer is not None:
                    self._closer.cancel()
                    self._closer = None
                self._spool_rest()

    def _unwritten(self) -> list[CallRecord]:
        records = list(self._in_flight)
        while not self.queue.empty():
            records.append(self.queue.get_nowait())
            self.queue.task_done()
        self._in_flight = []
        return records

    def _spool_rest(self) -> None:
        records = self._unwritten()
        if not records:
            return
        if self.spool_file is None:
            log.error("%d gateway call(s) not recorded at shutdown and no spool file to keep them", len(records))
            return
        self.spool_file.parent.mkdir(parents=True, exist_ok=True)
        with self.spool_file.open("a", encoding="utf-8") as spool:
            for record in records:
                spool.write(record.to_json() + "\n")
        self.counters.spooled += len(records)

    def _replay_spool(self) -> None:
        if self.spool_file is None:
            return
        replaying = self.spool_file.with_suffix(".replaying")
        # A replay a crash cut short is read again first; the new spool is appended to it, never put over it.
        if self.spool_file.is_file():
            with replaying.open("a", encoding="utf-8") as pending:
                pending.write(self.spool_file.read_text(encoding="utf-8"))
            self.spool_file.unlink()
        if not replaying.is_file():
            return
        for number, line in enumerate(replaying.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                self.queue.put_nowait(CallRecord.from_json(line))
            except (ValueError, TypeError, KeyError) as error:
                # Kept in the log with its text, so a person can recover it; the others are replayed.
                log.error("spooled call %d of %s cannot be read (%s): %s", number, replaying, error, line[:500])
                continue
            self.counters.replayed += 1
        replaying.unlink()

    async def _run(self) -> None:
        while True:
            # Whatever queued up while the last batch was written goes in one transaction.
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            self._in_flight = batch
            try:
                await self._write_with_retries(batch)
                self._in_flight = []
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def _back_off(self, batch: list[CallRecord], error: Exception, delay: float) -> None:
        # A store outage: keep the records and try again.
        self.counters.failed_attempts += 1
        log.warning("recording %d call(s) failed (%s); retrying in %.1f s", len(batch), error, delay)
        await asyncio.sleep(delay)

    async def _quarantine(self, record: CallRecord, error: Exception) -> None:
        # Never altered to make it fit (its logprobs belong to its text), never retried for ever: kept whole.
        said = str(getattr(error, "orig", None) or error).strip().splitlines()
        reason = f"{type(error).__name__}: {said[0]}" if said else type(error).__name__
        try:
            await asyncio.to_thread(
                PlayRecords(self.store).quarantine_gateway_call,
                record.call_id,
                record.agent_id,
                reason,
                record.to_json(),
            )
        except Exception as failure:  # noqa: BLE001 - kept in the log with its id at least
            log.error("gateway call %s refused (%s) and not quarantined: %s", record.call_id, reason, failure)
            return
        self.counters.quarantined += 1
        log.error("gateway call %s quarantined: %s", record.call_id, reason)

    async def _write_with_retries(self, batch: list[CallRecord]) -> None:
        delay = self.backoff_s
        while True:
            try:
                written = await asyncio.to_thread(PlayRecords(self.store).append_gateway_calls, batch)
            except StoreError as error:
                if len(batch) > 1:
                    # One refused call (an unknown agent) must not cost the others: write them one by one.
                    for record in batch:
                        await self._write_with_retries([record])
                    return
                # The game refuses it (unknown agent, read-only): retrying cannot help.
                self.counters.rejected += 1
                log.error("gateway call %s not recorded: %s", batch[0].call_id, error)
                return
            except Exception as error:  # noqa: BLE001 - sorted below: refused content, or a store outage
                if not refused_for_content(error):
                    await self._back_off(batch, error, delay)
                    delay = min(delay * 2, self.max_backoff_s)
                    continue
                if len(batch) > 1:
                    for record in batch:  # find the call the store refuses; the others are written
                        await self._write_with_retries([record])
                    return
                await self._quarantine(batch[0], error)
                return
            self.counters.recorded += written
            self.counters.duplicates += len(batch) - written
            return
