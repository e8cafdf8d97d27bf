"""isolated_llm: an SDK call answered offline and from a cassette, against the same call answered
in process by a mock transport; setup + teardown per test; cassette load per 1,000 interactions.

    .venv/bin/python benchmarks/bench_llm.py [--iterations 500] [--warmup 50]

Prints a table and writes benchmarks/results/llm.json. The floor is the ``openai`` SDK with its
HTTP client on a ``MockTransport`` that returns the same bytes, in the same process and run: what
the SDK costs with no server and no socket. Targets (issue 10): replay server-side handling <= 0.3
ms; SDK round trip <= 1.5x the floor; setup + teardown <= 1 ms; cassette load <= 15 ms per 1,000.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from isolated_env._recording import Cassette, make_interaction
from isolated_env.resources.llm import LlmHandle, isolated_llm

RESULTS = Path(__file__).parent / "results" / "llm.json"
MESSAGES = [{"role": "user", "content": "Summarise the benchmark in one sentence."}]
REQUEST = {"model": "gpt-4o-mini", "messages": MESSAGES}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(name: str, samples: list[float], target: str = "", ok: bool | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "n": len(samples),
        "p50_ms": round(statistics.median(samples), 4),
        "p99_ms": round(percentile(samples, 0.99), 4),
        "target": target,
        "meets_target": ok,
    }


async def timed(call: Callable[[], Awaitable[Any]], iterations: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        await call()
    out = []
    for _ in range(iterations):
        started = time.perf_counter()
        await call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def server_side(llm: LlmHandle, sink: list[float]) -> None:
    """Time the server's own handling of each request (the app, from parsed request to reply)."""
    server = llm._server
    assert server is not None
    answer = llm._answer

    async def timed_answer(raw: Any) -> Any:
        started = time.perf_counter()
        try:
            return await answer(raw)
        finally:
            sink.append((time.perf_counter() - started) * 1000)

    server.bind(timed_answer, llm._problems)


async def floor(body: bytes, iterations: int, warmup: int) -> list[float]:
    import httpx2
    import openai

    def handler(request: Any) -> Any:
        return httpx2.Response(200, content=body, headers={"content-type": "application/json"})

    async with openai.AsyncOpenAI(
        base_url="http://mock/v1",
        api_key="mock",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
    ) as client:
        return await timed(lambda: client.chat.completions.create(**REQUEST), iterations, warmup)


def synthetic_cassette(path: Path, count: int) -> None:
    cassette = Cassette(path, [])
    for n in range(count):
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {n}"}]})
        frames = [(1.0 + i, f'data: {{"choices":[{{"delta":{{"content":"w{i}"}}}}]}}\n\n'.encode()) for i in range(8)]
        cassette.add(
            make_interaction(
                "POST",
                "/v1/chat/completions",
                "",
                [("content-type", "application/json")],
                body.encode(),
                200,
                [("content-type", "text/event-stream; charset=utf-8")],
                [*frames, (9.0, b"data: [DONE]\n\n")],
            )
        )
    cassette.save(keep_existing=False)


async def recorded_pacing(path: Path, writes: int = 40, gap_ms: float = 5.0) -> list[float]:
    """How far from its recorded offset each write of a paced replay arrives (relative to the first)."""
    import httpx

    cassette = Cassette(path, [])
    frames = [(gap_ms * (n + 1), f'data: {{"n": {n}}}\n\n'.encode()) for n in range(writes)]
    cassette.add(
        make_interaction(
            "POST",
            "/v1/chat/completions",
            "",
            [],
            json.dumps(REQUEST).encode(),
            200,
            [("content-type", "text/event-stream; charset=utf-8")],
            frames,
        )
    )
    cassette.save(keep_existing=False)
    errors: list[float] = []
    async with isolated_llm(mode="replay", cassette=path, timing="recorded") as llm:
        async with httpx.AsyncClient(trust_env=False) as client:
            async with client.stream(
                "POST",
                llm.base_url + "/chat/completions",
                json=REQUEST,
                headers={"authorization": f"Bearer {llm.api_key}"},
            ) as response:
                arrivals = []
                async for piece in response.aiter_raw():
                    arrivals.append((time.perf_counter() * 1000, piece.count(b"data:")))
    first = arrivals[0][0]
    seen = 0
    for at, count in arrivals:  # a read that holds several writes counts for each of them
        for _ in range(count):
            errors.append(abs((at - first) - (frames[seen][0] - frames[0][0])))
            seen += 1
    return errors


async def main(iterations: int, warmup: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    offline_server: list[float] = []
    async with isolated_llm() as llm:
        llm.respond(
            "The benchmark measures the SDK round trip.", times=None, usage={"input_tokens": 12, "output_tokens": 8}
        )
        server_side(llm, offline_server)
        body = (await llm.client.with_raw_response.chat.completions.create(**REQUEST)).http_response.content
        offline = await timed(lambda: llm.client.chat.completions.create(**REQUEST), iterations, warmup)
    floor_ms = await floor(body, iterations, warmup)

    # replay: one recorded call, repeated iterations + warmup times in the cassette
    recorded = work / "replay.json"
    cassette = Cassette(recorded, [])
    for _ in range(iterations + warmup + 1):
        cassette.add(
            make_interaction(
                "POST",
                "/v1/chat/completions",
                "",
                [],
                json.dumps(REQUEST).encode(),
                200,
                [("content-type", "application/json")],
                [(1.0, body)],
            )
        )
    cassette.save(keep_existing=False)
    replay_server: list[float] = []
    async with isolated_llm(mode="replay", cassette=recorded) as llm:
        server_side(llm, replay_server)
        await llm.client.chat.completions.create(**REQUEST)
        replay = await timed(lambda: llm.client.chat.completions.create(**REQUEST), iterations, warmup)

    async def enter_exit() -> None:
        async with isolated_llm():
            pass

    setup = await timed(enter_exit, iterations * 2, warmup)

    synthetic_cassette(work / "thousand.json", 1000)
    loads = []
    for _ in range(20):
        started = time.perf_counter()
        Cassette.load(work / "thousand.json", must_exist=True)
        loads.append((time.perf_counter() - started) * 1000)

    pacing = await recorded_pacing(work / "paced.json")

    base = statistics.median(floor_ms)
    replay_handling = statistics.median(replay_server[-iterations:])
    rows += [
        row("floor: openai SDK on httpx MockTransport", floor_ms),
        row(
            "offline: openai SDK -> isolated_llm",
            offline,
            f"<= 1.5x floor ({1.5 * base:.3f})",
            statistics.median(offline) <= 1.5 * base,
        ),
        row(
            "replay: openai SDK -> isolated_llm",
            replay,
            f"<= 1.5x floor ({1.5 * base:.3f})",
            statistics.median(replay) <= 1.5 * base,
        ),
        row("offline: server-side handling", offline_server[-iterations:]),
        row("replay: server-side handling", replay_server[-iterations:], "<= 0.3 ms", replay_handling <= 0.3),
        row("setup + teardown per test (pooled server)", setup, "<= 1 ms", statistics.median(setup) <= 1.0),
        row("cassette load, 1,000 streamed interactions", loads, "<= 15 ms", statistics.median(loads) <= 15.0),
        row(
            "timing='recorded': |arrival - recorded| per write", pacing, "p95 <= 2 ms", percentile(pacing, 0.95) <= 2.0
        ),
    ]
    return {
        "benchmark": "llm",
        "command": "python benchmarks/bench_llm.py " + " ".join(sys.argv[1:]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "iterations": iterations,
        "warmup": warmup,
        "rows": rows,
        "ratios": {
            "offline_vs_floor": round(statistics.median(offline) / base, 2),
            "replay_vs_floor": round(statistics.median(replay) / base, 2),
        },
    }


def show(report: dict[str, Any]) -> None:
    head = f"{'measure':<46} {'n':>5} {'p50 ms':>9} {'p99 ms':>9}  target"
    print(head)
    print("-" * len(head))
    for r in report["rows"]:
        verdict = "" if r["meets_target"] is None else (" ok" if r["meets_target"] else " MISSED")
        print(f"{r['name']:<46} {r['n']:>5} {r['p50_ms']:>9.3f} {r['p99_ms']:>9.3f}  {r['target']}{verdict}")
    print(f"ratios to the floor: {report['ratios']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    result = anyio.run(main, args.iterations, args.warmup)
    show(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
