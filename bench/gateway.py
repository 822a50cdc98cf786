"""Latency the gateway adds, with 50 agents calling at once, against calling the upstream directly.

    .venv/bin/python bench/gateway.py [--agents 50] [--calls 10] [--latency 0.05]

An OpenAI-compatible TEST DOUBLE (its own process) answers every call after --latency seconds. The gateway
runs in its own process (uvicorn) recording into a SQLite store. --agents agents each make --calls calls in
a row, all agents at once: first straight to the double, then through the gateway. Printed: p50 and p99 of
each, the added latency (goal: p50 under 5 ms), and whether every call was recorded exactly once.

The double and the load generator are kept light (a bare asyncio HTTP server with keep-alive and a canned
answer; an aiohttp client), so that on a 2-core machine the harness does not eat the CPU the gateway needs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from babylon_assets.db.gateway_keys import GatewayKeyRecords  # noqa: E402
from babylon_assets.db.schema import LlmCallLog, table_of  # noqa: E402
from babylon_assets.db.store import Store  # noqa: E402

DECISION = '{"action": "HOLD", "reasoning": "waiting for the open"}'


def _canned_answer() -> bytes:
    tokens = [DECISION[i : i + 4] for i in range(0, len(DECISION), 4)]
    body = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": "deployed",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": DECISION},
                    "logprobs": {
                        "content": [
                            {"token": t, "logprob": -0.1, "bytes": list(t.encode()), "top_logprobs": []} for t in tokens
                        ]
                    },
                }
            ],
            "usage": {"prompt_tokens": 40, "completion_tokens": len(tokens), "total_tokens": 40 + len(tokens)},
        }
    ).encode()
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _serve_light_double(latency: float, urls: multiprocessing.Queue, stop: multiprocessing.Event) -> None:  # type: ignore[type-arg]
    """A TEST DOUBLE upstream: minimal HTTP/1.1 with keep-alive, a canned chat completion after `latency`."""
    answer = _canned_answer()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                await asyncio.sleep(latency)
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        urls.put(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1")
        while not stop.is_set():
            await asyncio.sleep(0.1)
        server.close()

    asyncio.run(main())


def _run_gateway(database_url: str, upstream_url: str, port: int) -> None:
    import uvicorn

    from babylon_assets.gateway.app import Upstream, create_app
    from babylon_assets.gateway.auth import GatewayKeys
    from babylon_assets.gateway.recording import GatewayRecorder

    store = Store(database_url)
    recorder = GatewayRecorder(store)
    if os.environ.get("BENCH_GATEWAY_NO_RECORDING"):
        recorder.submit = lambda record: None  # type: ignore[method-assign]  # to see what recording costs
    app = create_app(
        lambda: Upstream("openai/deployed", upstream_url, version="bench@0"), recorder, keys=GatewayKeys(store)
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def load(url: str, agents: int, calls: int, gateway: bool, key: str = "") -> list[float]:
    import aiohttp

    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def agent(n: int) -> None:
            # Through the gateway: the game server's key, verified on every call as in production.
            headers = {"X-Babylon-Agent": f"agent-{n:03d}", "Authorization": f"Bearer {key}"} if gateway else {}
            for call in range(calls):
                payload = {
                    "model": "deployed",
                    "max_tokens": 64,
                    "logprobs": True,
                    "messages": [
                        {"role": "system", "content": f"You are agent {n}."},
                        {"role": "user", "content": f"Minute {call}: NVDX $100.00."},
                    ],
                }
                started = time.perf_counter()
                async with session.post(f"{url}/chat/completions", json=payload, headers=headers) as response:
                    await response.read()
                    latencies.append(time.perf_counter() - started)
                    assert response.status == 200, await response.text()

        await asyncio.gather(*(agent(n) for n in range(agents)))
    return latencies


@contextmanager
def upstream_and_gateway(database_url: str, latency: float, port: int) -> Iterator[tuple[str, multiprocessing.Process]]:
    """The light test-double upstream and the gateway (recording into `database_url`), each in its own process,
    until the block ends; yields the upstream's URL and the gateway's process."""
    urls: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    stop = multiprocessing.Event()
    double = multiprocessing.Process(target=_serve_light_double, args=(latency, urls, stop), daemon=True)
    double.start()
    upstream = urls.get(timeout=30)
    gateway = multiprocessing.Process(target=_run_gateway, args=(database_url, upstream, port), daemon=True)
    gateway.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.2)
        yield upstream, gateway
    finally:
        gateway.terminate()
        gateway.join(timeout=10)
        stop.set()
        double.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        database_url = f"sqlite:///{Path(tmp) / 'gateway.db'}"
        store = Store(database_url)
        store.upgrade()
        _, key = GatewayKeyRecords(store).create(agents=None, label="bench: the game server")
        port = 18787
        with upstream_and_gateway(database_url, args.latency, port) as (upstream, _):
            asyncio.run(load(upstream, 5, 2, gateway=False))  # warm-up of both paths
            asyncio.run(load(f"http://127.0.0.1:{port}/v1", 5, 2, gateway=True, key=key))
            direct = asyncio.run(load(upstream, args.agents, args.calls, gateway=False))
            through = asyncio.run(load(f"http://127.0.0.1:{port}/v1", args.agents, args.calls, gateway=True, key=key))
            total = 10 + args.agents * args.calls
            deadline = time.monotonic() + 60
            while True:
                with store.engine.connect() as connection:
                    rows, distinct = connection.execute(
                        select(func.count(), func.count(table_of(LlmCallLog).c.callId.distinct()))
                    ).one()
                if rows >= total or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        ms = 1000
        print(f"{args.agents} agents x {args.calls} calls at once, upstream latency {args.latency * ms:.0f} ms")
        for label, values in (("direct ", direct), ("gateway", through)):
            print(
                f"  {label}: p50 {percentile(values, 0.5) * ms:7.1f} ms  p99 {percentile(values, 0.99) * ms:7.1f} ms"
                f"  mean {statistics.mean(values) * ms:7.1f} ms"
            )
        added_p50 = (percentile(through, 0.5) - percentile(direct, 0.5)) * ms
        added_p99 = (percentile(through, 0.99) - percentile(direct, 0.99)) * ms
        print(
            f"  added by the gateway: p50 {added_p50:.1f} ms ({'met' if added_p50 < 5 else 'NOT met'}: goal < 5 ms), "
            f"p99 {added_p99:.1f} ms"
        )
        print(
            f"  recorded {rows} of {total} calls, {distinct} distinct: "
            f"{'none lost, none twice' if rows == distinct == total else 'MISMATCH'}"
        )


if __name__ == "__main__":
    main()
