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
import asyncio
import contextlib
import inspect
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio

from isolated_env._recording import Cassette, make_interaction
from isolated_env.resources.llm import LlmHandle, isolated_llm

RESULTS = Path(__file__).parent / "results" / "llm.json"
MESSAGES = [{"role": "user", "content": "Summarise the benchmark in one sentence."}]
REQUEST = {"model": "gpt-4o-mini", "messages": MESSAGES}
SSE = "text/event-stream; charset=utf-8"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(name: str, samples: list[float], target: str = "", ok: bool | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "n": len(samples),
        "p25_ms": round(percentile(samples, 0.25), 4),
        "p50_ms": round(statistics.median(samples), 4),
        "p99_ms": round(percentile(samples, 0.99), 4),
        "target": target,
        "meets_target": ok,
    }


async def timed(calls: dict[str, Callable[[], Any]], iterations: int, warmup: int) -> dict[str, list[float]]:
    """Each call's time in ms, ``iterations`` times: the calls take turns, so a change of load on
    the machine weighs on all of them alike (a call may return an awaitable, which is awaited)."""
    out: dict[str, list[float]] = {name: [] for name in calls}
    for n in range(warmup + iterations):
        for name, call in calls.items():
            started = time.perf_counter()
            result = call()
            if inspect.isawaitable(result):
                await result
            if n >= warmup:
                out[name].append((time.perf_counter() - started) * 1000)
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


def floor_client(body: bytes) -> Any:
    """The openai SDK on an in-process MockTransport returning ``body``: no server, no socket."""
    import httpx2
    import openai

    def handler(request: Any) -> Any:
        return httpx2.Response(200, content=body, headers={"content-type": "application/json"})

    return openai.AsyncOpenAI(
        base_url="http://mock/v1",
        api_key="mock",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
    )


@contextlib.asynccontextmanager
async def socket_floor(body: bytes) -> AsyncIterator[Any]:
    """The openai SDK against a loopback socket that writes back canned bytes: what the SDK's HTTP
    stack and the sockets cost with no server behind them (it reads the request's head and
    Content-Length body and parses nothing else: a measuring stick, not a server)."""
    import openai

    answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                await reader.readexactly(int(found[1]) if found else 0)
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0) as client:
            yield client
    finally:
        server.close()
        await server.wait_closed()


def calls_cassette(path: Path, requests: list[bytes], headers: list[tuple[str, str]], writes: list[Any]) -> None:
    """A cassette of one recorded answer to each of ``requests``."""
    cassette = Cassette(path, [])
    for request in requests:
        cassette.add(make_interaction("POST", "/v1/chat/completions", "", [], request, 200, headers, writes))
    cassette.save(keep_existing=False)


def questions(count: int) -> list[dict[str, Any]]:
    """``count`` different calls: a test's calls differ, and a cassette holds one answer per call."""
    text = MESSAGES[0]["content"]
    return [{**REQUEST, "messages": [{"role": "user", "content": f"{text} #{n}"}]} for n in range(count)]


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

    frames = [(gap_ms * (n + 1), f'data: {{"n": {n}}}\n\n'.encode()) for n in range(writes)]
    calls_cassette(path, [json.dumps(REQUEST).encode()], [("content-type", SSE)], frames)
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
    replay_server: list[float] = []
    async with isolated_llm() as offline_llm:
        offline_llm.respond(
            "The benchmark measures the SDK round trip.", times=None, usage={"input_tokens": 12, "output_tokens": 8}
        )
        raw = await offline_llm.client.with_raw_response.chat.completions.create(**REQUEST)
        body = raw.http_response.content
        # replay: a cassette with the same answer recorded for each call the benchmark makes
        asked = questions(iterations + warmup)
        recorded = work / "replay.json"
        json_type = [("content-type", "application/json")]
        calls_cassette(recorded, [json.dumps(q).encode() for q in asked], json_type, [(1.0, body)])
        async with (
            isolated_llm(mode="replay", cassette=recorded) as replay_llm,
            floor_client(body) as mock,
            socket_floor(body) as canned,
        ):
            server_side(offline_llm, offline_server)
            server_side(replay_llm, replay_server)
            turns = {name: iter(asked) for name in ("floor", "socket", "offline", "replay")}
            calls = {
                "floor": lambda: mock.chat.completions.create(**next(turns["floor"])),
                "socket": lambda: canned.chat.completions.create(**next(turns["socket"])),
                "offline": lambda: offline_llm.client.chat.completions.create(**next(turns["offline"])),
                "replay": lambda: replay_llm.client.chat.completions.create(**next(turns["replay"])),
            }
            sdk = await timed(calls, iterations, warmup)
    floor_ms, socket_ms, offline, replay = sdk["floor"], sdk["socket"], sdk["offline"], sdk["replay"]

    async def enter_exit() -> None:
        async with isolated_llm():
            pass

    work_file = work / "thousand.json"
    synthetic_cassette(work_file, 1000)
    setup = (await timed({"setup": enter_exit}, iterations * 2, warmup))["setup"]
    loads = (await timed({"load": lambda: Cassette.load(work_file, must_exist=True)}, 20, 2))["load"]
    pacing = await recorded_pacing(work / "paced.json")

    base = statistics.median(floor_ms)
    replay_handling = statistics.median(replay_server[-iterations:])
    rows += [
        row("floor: openai SDK on httpx MockTransport", floor_ms),
        row("socket floor: openai SDK -> canned bytes", socket_ms),
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
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "iterations": iterations,
        "warmup": warmup,
        "rows": rows,
        "ratios": {
            "offline_vs_floor": round(statistics.median(offline) / base, 2),
            "replay_vs_floor": round(statistics.median(replay) / base, 2),
            "socket_floor_vs_floor": round(statistics.median(socket_ms) / base, 2),
            "offline_vs_socket_floor": round(statistics.median(offline) / statistics.median(socket_ms), 2),
            "replay_vs_socket_floor": round(statistics.median(replay) / statistics.median(socket_ms), 2),
        },
        "ratios_p25": {  # the quieter quarter of the turns: less of the machine's load in it
            name: round(percentile(ms, 0.25) / percentile(floor_ms, 0.25), 2)
            for name, ms in (("socket_floor", socket_ms), ("offline", offline), ("replay", replay))
        },
    }


def show(report: dict[str, Any]) -> None:
    head = f"{'measure':<50} {'n':>5} {'p25 ms':>8} {'p50 ms':>8} {'p99 ms':>8}  target"
    print(head)
    print("-" * len(head))
    for r in report["rows"]:
        verdict = "" if r["meets_target"] is None else (" ok" if r["meets_target"] else " MISSED")
        print(
            f"{r['name']:<50} {r['n']:>5} {r['p25_ms']:>8.3f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f}  "
            f"{r['target']}{verdict}"
        )
    print(f"ratios (p50): {report['ratios']}")
    print(f"ratios to the floor at p25: {report['ratios_p25']}")
    print(f"load average: {report['load_average']}")


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
