"""The gateway's recording under faults: a call the store refuses for its content is quarantined whole and costs
the others nothing; calls the store cannot take at shutdown are spooled and recorded at the next start."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from babylon_assets.db.play_records import PlayRecords
from babylon_assets.db.schema import LlmCallLog, QuarantinedGatewayCall, table_of
from babylon_assets.db.store import Store
from babylon_assets.gateway.app import AGENT_HEADER, Upstream, create_app
from babylon_assets.gateway.recording import GatewayRecorder
from tests.doubles.openai_compatible import OpenAICompatibleTestDouble
from tests.gateway.keys import AUTH, TEST_KEYS
from tests.gateway.test_gateway import DECISION, HOUR, body, count, wait_until


@pytest.mark.postgres
def test_a_nul_character_is_quarantined_on_postgres_and_later_calls_are_recorded(fresh_pg_url):
    store = Store(fresh_pg_url)
    store.upgrade()
    recorder = GatewayRecorder(store, backoff_s=0.05)
    with OpenAICompatibleTestDouble([DECISION] * 3) as double:
        app = create_app(lambda: Upstream("openai/deployed", double.base_url), recorder, lambda: HOUR, keys=TEST_KEYS)
        with TestClient(app, headers=AUTH) as client:
            poisoned = body("agent-1", 0)
            poisoned["messages"][1]["content"] = "Minute 0: NVDX \x00$100."
            for agent, payload in (
                ("agent-1", poisoned),
                ("agent-1", body("agent-1", 1)),
                ("agent-2", body("agent-2", 2)),
            ):
                answer = client.post("/v1/chat/completions", json=payload, headers={AGENT_HEADER: agent})
                assert answer.status_code == 200
            wait_until(lambda: recorder.counters.recorded + recorder.counters.quarantined == 3)
    assert recorder.counters.quarantined == 1 and recorder.counters.recorded == 2
    assert count(store, LlmCallLog) == 2
    with store.engine.connect() as connection:
        (kept,) = connection.execute(select(table_of(QuarantinedGatewayCall))).mappings().all()
    assert "NUL" in kept["reason"] and kept["agent_id"] == "agent-1"
    assert json.loads(kept["record_json"])["user_prompt"] == "Minute 0: NVDX \x00$100."  # whole, never altered
    store.dispose()


def test_calls_the_store_cannot_take_at_shutdown_are_spooled_and_recorded_at_the_next_start(tmp_path, monkeypatch):
    store = Store(f"sqlite:///{tmp_path / 'spool.db'}")
    store.upgrade()
    spool = tmp_path / "spool.jsonl"
    original = PlayRecords.append_gateway_calls

    def down(self, records):
        raise ConnectionError("the store is down")

    monkeypatch.setattr(PlayRecords, "append_gateway_calls", down)
    recorder = GatewayRecorder(store, backoff_s=0.05, spool_file=spool)
    with OpenAICompatibleTestDouble([DECISION] * 3) as double:
        app = create_app(lambda: Upstream("openai/deployed", double.base_url), recorder, lambda: HOUR, keys=TEST_KEYS)
        with TestClient(app, headers=AUTH) as client:
            for minute in range(3):
                answer = client.post(
                    "/v1/chat/completions", json=body("agent-1", minute), headers={AGENT_HEADER: "agent-1"}
                )
                assert answer.status_code == 200
            wait_until(lambda: recorder.counters.failed_attempts > 0)
            # the app's shutdown drains for at most 30 s: stop it sooner here, as a deploy's restart would
            asyncio.run_coroutine_threadsafe(recorder.stop(drain_timeout_s=0.2), recorder._loop).result(10)  # type: ignore[arg-type]
    assert recorder.counters.spooled == 3 and len(spool.read_text().splitlines()) == 3
    assert count(store, LlmCallLog) == 0
    monkeypatch.setattr(PlayRecords, "append_gateway_calls", original)
    again = GatewayRecorder(store, backoff_s=0.05, spool_file=spool)

    async def restart() -> None:
        again.start()
        await again.drain(10)
        await again.stop()

    asyncio.run(restart())
    assert again.counters.replayed == 3 and again.counters.recorded == 3 and not spool.exists()
    assert count(store, LlmCallLog) == 3
    store.dispose()


@pytest.mark.postgres
def test_two_gateways_on_one_database_lose_no_step_and_do_not_deadlock(fresh_pg_url):
    import threading
    import time
    import uuid
    from datetime import timedelta

    from babylon_assets.db.schema import Trajectory
    from babylon_assets.gateway.recording import CallRecord

    first = Store(fresh_pg_url)
    first.upgrade()
    stores = [first, Store(fresh_pg_url)]
    agents = [f"agent-{n}" for n in range(5)]

    def record(gateway: int, n: int) -> CallRecord:
        return CallRecord(
            call_id=uuid.uuid4().hex,
            agent_id=agents[n % 5],
            at=HOUR + timedelta(seconds=n, milliseconds=gateway),
            model="openai/deployed",
            model_version="v@1",
            system_prompt="s",
            user_prompt=f"{gateway}:{n}",
            messages=[{"role": "user", "content": "u"}],
            response=DECISION,
            temperature=1.0,
            max_tokens=8,
            latency_ms=1.0,
        )

    errors: list[str] = []

    def gateway(index: int) -> None:
        pending = [record(index, n) for n in range(200)]
        while pending:
            batch, pending = pending[: 1 + len(pending) % 4], pending[1 + len(pending) % 4 :]
            for _ in range(50):  # a conflicting first insert of an agent-hour is retried, as the recorder does
                try:
                    PlayRecords(stores[index]).append_gateway_calls(batch)
                    break
                except Exception as error:  # noqa: BLE001
                    errors.append(type(error).__name__)
                    time.sleep(0.01)
            else:
                raise AssertionError(f"gateway {index} could not write: {errors[-3:]}")

    threads = [threading.Thread(target=gateway, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "deadlocked"
    assert count(first, LlmCallLog) == 400
    with first.engine.connect() as connection:
        steps = [
            len(json.loads(text)) for text in connection.execute(select(table_of(Trajectory).c.stepsJson)).scalars()
        ]
    assert sorted(steps) == [80] * 5, steps  # every call is a step of its agent's hour: none lost
    assert "DeadlockDetected" not in " ".join(errors)
    for store in stores:
        store.dispose()


def test_a_call_its_client_abandoned_is_not_recorded_as_play(tmp_path):
    import time

    import httpx

    from babylon_assets.gateway.server import gateway_in_thread
    from tests.doubles.openai_compatible import ScriptedReply

    store = Store(f"sqlite:///{tmp_path / 'gone.db'}")
    store.upgrade()
    calls: list[int] = []

    def slow_then_quick(request: dict) -> ScriptedReply:
        calls.append(1)
        return ScriptedReply(DECISION, delay_s=1.5 if len(calls) == 1 else 0.0)

    with (
        OpenAICompatibleTestDouble(slow_then_quick) as double,
        gateway_in_thread(store, Upstream("openai/deployed", double.base_url)) as gateway,
    ):
        headers = {AGENT_HEADER: "agent-1", "Authorization": f"Bearer {gateway.api_key}"}
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{gateway.url}/chat/completions", json=body("agent-1", 0), headers=headers, timeout=0.3)
        wait_until(lambda: gateway.recorder.counters.abandoned == 1, timeout_s=10)
        kept = httpx.post(f"{gateway.url}/chat/completions", json=body("agent-1", 1), headers=headers, timeout=10)
        assert kept.status_code == 200
        wait_until(lambda: gateway.recorder.counters.recorded == 1)
        time.sleep(0.2)
    assert count(store, LlmCallLog) == 1
    store.dispose()


def test_an_upstream_answer_that_cannot_be_read_reaches_the_agent_unchanged_never_a_500(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Garbled(BaseHTTPRequestHandler):  # a TEST DOUBLE upstream that answers 200 with something not JSON
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            payload = b"<html>upstream proxy page</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Garbled)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    store = Store(f"sqlite:///{tmp_path / 'garbled.db'}")
    store.upgrade()
    recorder = GatewayRecorder(store, backoff_s=0.05)
    upstream = Upstream("openai/deployed", f"http://127.0.0.1:{server.server_address[1]}/v1")
    try:
        app = create_app(lambda: upstream, recorder, lambda: HOUR, keys=TEST_KEYS)
        with TestClient(app, headers=AUTH) as client:
            answer = client.post("/v1/chat/completions", json=body("agent-1", 0), headers={AGENT_HEADER: "agent-1"})
        assert answer.status_code == 200 and answer.content == b"<html>upstream proxy page</html>"
        assert recorder.counters.unreadable == 1 and count(store, LlmCallLog) == 0
    finally:
        server.shutdown()
        store.dispose()
