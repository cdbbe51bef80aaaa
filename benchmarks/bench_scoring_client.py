"""Scoring-client throughput against a loopback endpoint with controlled, skewed latency.

    python benchmarks/bench_scoring_client.py [--scale 10]

A local HTTP server answers every chat-completion request after a delay drawn from the
request's own content (so every method sees the same delays): 80 % answer in 0.2 s,
20 % in 4 s (``--scale 1``: 20 ms / 400 ms). We time phasedsft's worker pool (through ``OpenAIScorer``, cache writes
included) at concurrency 1, 8 and 32, and the lock-step pattern of the authors' scripts
(batches of 10 sent with ``asyncio.gather``, each batch waiting for its slowest call).

achieved/ideal: the ideal is the makespan of the same method with zero overhead on the
same delays (a pool: each request, in order, on the first free slot; lock-step: the sum
of each batch's slowest delay), so the ratio measures what the implementation loses.
Targets: >= 0.9 of ideal, and >= 2x the lock-step pattern under this skew.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from phasedsft.data.graded import generate_suite
from phasedsft.llm.cache import ScoreCache
from phasedsft.score.api import OpenAIScorer
from phasedsft.score.context import ScoreContext
from phasedsft.score.prompt import messages

# Real API latencies are seconds; the default scale keeps the run near two minutes. With a
# smaller scale (--scale 1: 20 ms / 400 ms) the client library's own CPU time per request
# (~6 ms on a 2-core box) becomes the ceiling at high concurrency, which is worth seeing too.
SCALE = float(sys.argv[sys.argv.index("--scale") + 1]) if "--scale" in sys.argv else 10.0
FAST, SLOW, P_SLOW = 0.02 * SCALE, 0.4 * SCALE, 0.2


def delay_for(messages_: list[dict[str, str]]) -> float:
    """The server's delay for a request, a function of its messages only."""
    h = int.from_bytes(hashlib.sha256(json.dumps(messages_).encode()).digest()[:4], "big") / 2**32
    return SLOW if h < P_SLOW else FAST


REPLY = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "bench",
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": '{"task": 3, "response": 2}'},
        }
    ],
    "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
}


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length)
            await asyncio.sleep(delay_for(json.loads(body)["messages"]))
            payload = json.dumps(REPLY).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(payload)).encode()
                + b"\r\n\r\n"
                + payload
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def serve(port: int) -> None:
    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, limit=2**20)
        await server.serve_forever()

    asyncio.run(main())


def start_server() -> tuple[int, subprocess.Popen]:
    """The endpoint runs in its own process, so it takes no CPU time from the client's."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--scale", str(SCALE)])
    for _ in range(200):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return port, proc
        time.sleep(0.05)
    raise RuntimeError("benchmark endpoint did not start")


def ideal(delays: list[float], concurrency: int) -> float:
    """Makespan of a zero-overhead pool: each request starts, in order, on the first free slot."""
    import heapq

    slots = [0.0] * concurrency
    for d in delays:
        heapq.heappush(slots, heapq.heappop(slots) + d)
    return max(slots)


def ideal_lockstep(delays: list[float], batch: int = 10) -> float:
    return sum(max(delays[i : i + batch]) for i in range(0, len(delays), batch))


def run_pool(base_url: str, examples, concurrency: int) -> float:
    scorer = OpenAIScorer(
        model="bench", base_url=base_url, concurrency=concurrency, max_tokens=16, parse_retries=0
    )
    with tempfile.TemporaryDirectory() as d:
        ctx = ScoreContext(cache=ScoreCache(Path(d) / "s.sqlite"))
        t = time.perf_counter()
        stats = scorer.run(examples, ctx)
        elapsed = time.perf_counter() - t
    assert stats.done == len(examples) and stats.failed == 0
    return elapsed


def run_lockstep(base_url: str, examples, batch: int = 10) -> float:
    from openai import AsyncOpenAI

    async def main() -> None:
        client = AsyncOpenAI(base_url=base_url, api_key="unused")
        for start in range(0, len(examples), batch):
            await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="bench", messages=messages(ex), max_tokens=16
                    )
                    for ex in examples[start : start + batch]
                )
            )

    t = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - t


def main() -> None:
    import logging

    logging.disable(logging.WARNING)
    import openai  # noqa: F401  (a one-off import cost of ~1 s is not throughput)

    port, server = start_server()
    base_url = f"http://127.0.0.1:{port}/v1"
    examples = generate_suite(200, seed=7).examples
    print(
        f"delays: {FAST * 1000:.0f} ms (p={1 - P_SLOW:.0%}) / {SLOW * 1000:.0f} ms (p={P_SLOW:.0%}), skewed"
    )
    delays = [delay_for(messages(ex)) for ex in examples]
    rows = []
    try:
        for concurrency, n in ((1, 50), (8, 200), (32, 200)):
            elapsed = run_pool(base_url, examples[:n], concurrency)
            rows.append(
                (f"pool, concurrency {concurrency}", n, elapsed, ideal(delays[:n], concurrency))
            )
        lock = run_lockstep(base_url, examples)
        rows.append(("lock-step batches of 10", 200, lock, ideal_lockstep(delays)))
    finally:
        server.kill()
    print(
        f"\n{'method':<26}{'requests':>9}{'seconds':>9}{'req/s':>8}{'ideal s':>9}{'achieved/ideal':>16}"
    )
    for name, n, elapsed, best in rows:
        print(
            f"{name:<26}{n:>9}{elapsed:>9.2f}{n / elapsed:>8.1f}{best:>9.2f}{best / elapsed:>16.2f}"
        )
    print(f"\npool(32) vs lock-step(10): {lock / rows[2][2]:.1f}x faster")


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve(int(sys.argv[sys.argv.index("--serve") + 1]))
    else:
        main()
