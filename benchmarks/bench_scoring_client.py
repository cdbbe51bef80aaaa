"""Scoring-client throughput against a loopback endpoint with controlled, skewed latency.

    python benchmarks/bench_scoring_client.py [--scale 10] [--requests 200] [--rounds 5] [--json FILE]

A local HTTP server answers every chat-completion request after a delay drawn from the
request's own content (so every method sees the same delays): 80 % answer in 0.2 s,
20 % in 4 s (``--scale 1``: 20 ms / 400 ms). We time phasedsft's worker pool (through ``OpenAIScorer``, cache writes
included) at concurrency 1, 8 and 32, and the lock-step pattern of the authors' scripts
(batches of 10 sent with ``asyncio.gather``, each batch waiting for its slowest call).

achieved/ideal: the ideal is the makespan of the same method with zero overhead on the
same delays (a pool: each request, in order, on the first free slot; lock-step: the sum
of each batch's slowest delay), so the ratio measures what the implementation loses.
Targets: >= 0.9 of ideal, and >= 2x the lock-step pattern under this skew.

Interleaved: ``--rounds`` rounds (after one untimed warm-up batch), each round every method
once, on the same ``--requests`` requests (concurrency 1: the first quarter of them); every
ratio is taken within a round and reported as median [min-max] over rounds. ``--json FILE``
writes every measurement, for ``benchmarks/compare.py``. One round takes about 15 x
``--scale`` seconds at 200 requests, nearly all of it waiting on the endpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare import median_range, write_json

from phasedsft.data.graded import generate_suite
from phasedsft.llm.cache import ScoreCache
from phasedsft.score.api import OpenAIScorer
from phasedsft.score.context import ScoreContext
from phasedsft.score.prompt import messages

# Real API latencies are seconds; the default scale keeps a round near 2.5 minutes. With a
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

    p = argparse.ArgumentParser()
    p.add_argument("--scale", type=float, default=10.0, help="delays: 20 ms / 400 ms times this")
    p.add_argument(
        "--requests", type=int, default=200, help="per method (concurrency 1: a quarter)"
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="write the measurements here")
    args = p.parse_args()
    logging.disable(logging.WARNING)
    import openai  # noqa: F401  (a one-off import cost of ~1 s is not throughput)

    port, server = start_server()
    base_url = f"http://127.0.0.1:{port}/v1"
    examples = generate_suite(args.requests, seed=7).examples
    n1 = max(1, args.requests // 4)
    delays = [delay_for(messages(ex)) for ex in examples]
    methods = {  # name: (label, requests, run)
        "pool_c1": ("pool, concurrency 1", n1, lambda: run_pool(base_url, examples[:n1], 1)),
        "pool_c8": ("pool, concurrency 8", len(examples), lambda: run_pool(base_url, examples, 8)),
        "pool_c32": (
            "pool, concurrency 32",
            len(examples),
            lambda: run_pool(base_url, examples, 32),
        ),
        "lockstep": (
            "lock-step batches of 10",
            len(examples),
            lambda: run_lockstep(base_url, examples),
        ),
    }
    best = {
        "pool_c1": ideal(delays[:n1], 1),
        "pool_c8": ideal(delays, 8),
        "pool_c32": ideal(delays, 32),
        "lockstep": ideal_lockstep(delays),
    }
    print(
        f"delays: {FAST * 1000:.0f} ms (p={1 - P_SLOW:.0%}) / {SLOW * 1000:.0f} ms (p={P_SLOW:.0%}),"
        f" skewed; {args.rounds} interleaved rounds, median [min-max]"
    )
    seconds: dict[str, list[float]] = {k: [] for k in methods}
    try:
        run_pool(base_url, examples[:8], 8)  # warm-up: connections, first-call costs
        for _ in range(args.rounds):  # interleaved: every method once per round
            for name, (_, _, run) in methods.items():
                seconds[name].append(run())
    finally:
        server.kill()
    per_round = {f"{name}_of_ideal": [best[name] / t for t in seconds[name]] for name in methods}
    per_round["pool_c32_over_lockstep"] = [
        lock / pool for lock, pool in zip(seconds["lockstep"], seconds["pool_c32"], strict=True)
    ]
    summary = {k: median_range(v) for k, v in per_round.items()}
    print(
        f"\n{'method':<26}{'requests':>9}{'seconds':>16}{'req/s':>8}{'ideal s':>9}"
        f"{'achieved/ideal':>22}"
    )
    for name, (label, n, _) in methods.items():
        t, r = median_range(seconds[name]), summary[f"{name}_of_ideal"]
        print(
            f"{label:<26}{n:>9}{t['median']:>7.2f} [{t['min']:.1f}-{t['max']:.1f}]"
            f"{n / t['median']:>8.1f}{best[name]:>9.2f}"
            f"{r['median']:>10.2f} [{r['min']:.2f}-{r['max']:.2f}]"
        )
    m = summary["pool_c32_over_lockstep"]
    print(
        f"\npool(32) vs lock-step(10): {m['median']:.1f}x [{m['min']:.1f}-{m['max']:.1f}] faster"
        "   (targets: >= 0.9 of ideal, >= 2x lock-step)"
    )
    write_json(
        args.json,
        {
            "bench": "scoring_client",
            "scale": args.scale,
            "delays_s": [FAST, SLOW],
            "p_slow": P_SLOW,
            "requests": {name: n for name, (_, n, _) in methods.items()},
            "rounds": args.rounds,
            "ideal_s": best,
            "seconds": seconds,
            "per_round": per_round,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve(int(sys.argv[sys.argv.index("--serve") + 1]))
    else:
        main()
