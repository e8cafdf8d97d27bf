"""isolated_http against the tools it replaces: setup + one request + teardown, plain and TLS, and
what a replayed request costs next to a live one.

    python benchmarks/bench_http.py [--iterations 200] [--warmup 20] [--requests 300]

Rows for pytest-httpserver and respx are measured in the same run when they are importable (they
are not dependencies of isolated_env: install them beside it to compare). pytest-httpserver is
measured as its users run it, one server per session cleared between tests, and with a fresh
server per test; respx with a fresh ``respx.mock`` and client per test (it opens no socket at all).
Prints a table (milliseconds) and writes benchmarks/results/http.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx

from isolated_env.resources.http import isolated_http

RESULTS = Path(__file__).parent / "results" / "http.json"


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _repeat(once: Callable[[], Awaitable[None]], iterations: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        await once()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        await once()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def _isolated(tls: bool) -> None:
    async with isolated_http(tls=tls) as http:
        http.expect("GET", "/users/1").respond_json({"id": 1})
        response = await http.client.get("/users/1")
        assert response.json() == {"id": 1}


def _httpserver_rows(iterations: int, warmup: int, ca: Any) -> list[tuple[str, list[float]]]:
    try:
        from pytest_httpserver import HTTPServer
    except ImportError:
        print("pytest-httpserver is not installed: its rows are left out")
        return []
    rows = []
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    shared = HTTPServer()
    shared.start()
    client = httpx.Client(trust_env=False)

    def on_shared() -> None:
        shared.expect_request("/users/1").respond_with_json({"id": 1})
        assert client.get(shared.url_for("/users/1")).json() == {"id": 1}
        shared.check_assertions()
        shared.clear()

    def fresh(context: ssl.SSLContext | None, verify: Any) -> Callable[[], None]:
        def once() -> None:
            server = HTTPServer(ssl_context=context)
            server.start()
            try:
                server.expect_request("/users/1").respond_with_json({"id": 1})
                with httpx.Client(verify=verify, trust_env=False) as own:
                    assert own.get(server.url_for("/users/1")).json() == {"id": 1}
                server.check_assertions()
            finally:
                server.stop()

        return once

    try:
        rows.append(("pytest-httpserver, shared server + clear()", _sync_repeat(on_shared, iterations, warmup)))
        plain_client = httpx.create_ssl_context()
        rows.append(("pytest-httpserver, fresh server", _sync_repeat(fresh(None, plain_client), iterations, warmup)))
        if ca is not None:
            server_context = ca.server_context()
            rows.append(("pytest-httpserver, fresh server, TLS",
                         _sync_repeat(fresh(server_context, ca.client_context), iterations, warmup)))
    finally:
        client.close()
        shared.stop()
    return rows


def _sync_repeat(once: Callable[[], None], iterations: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        once()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        once()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def _respx_row(iterations: int, warmup: int) -> list[tuple[str, list[float]]]:
    try:
        import respx
    except ImportError:
        print("respx is not installed: its row is left out")
        return []
    context = httpx.create_ssl_context()

    async def once() -> None:
        with respx.mock(assert_all_called=True) as mock:
            mock.get("https://api.example.com/users/1").mock(return_value=httpx.Response(200, json={"id": 1}))
            async with httpx.AsyncClient(verify=context) as client:
                assert (await client.get("https://api.example.com/users/1")).json() == {"id": 1}

    return [("respx (no socket), fresh mock + client", await _repeat(once, iterations, warmup))]


async def _per_request(requests: int) -> tuple[list[float], list[float]]:
    """Per-request time against live expectations, and replaying the same from a cassette."""
    tape = Path(tempfile.mkdtemp(prefix="bench-http-")) / "t.jsonl"
    body = {"id": 1, "name": "Ann", "roles": ["admin", "user"]}

    async def timed(http: Any) -> list[float]:
        samples = []
        for _ in range(requests):
            started = time.perf_counter()
            await http.client.get("/users/1")
            samples.append((time.perf_counter() - started) * 1000)
        return samples

    async with isolated_http() as upstream:
        upstream.expect("GET", "/users/1").respond_json(body)
        live = await timed(upstream)
        async with isolated_http(mode="record", cassette=tape, upstream=upstream.url) as http:
            for _ in range(requests):
                await http.client.get("/users/1")
    async with isolated_http(mode="replay", cassette=tape) as http:
        replayed = await timed(http)
    tape.unlink()
    tape.parent.rmdir()
    return live, replayed


async def main(iterations: int, warmup: int, requests: int) -> None:
    try:
        from isolated_env.resources._tls import run_ca

        ca: Any = await run_ca()
    except ImportError as exc:
        print(f"TLS rows left out: {exc}")
        ca = None
    rows: list[tuple[str, list[float]]] = [
        ("isolated_http, plain", await _repeat(lambda: _isolated(False), iterations, warmup)),
    ]
    if ca is not None:
        rows.append(("isolated_http, TLS", await _repeat(lambda: _isolated(True), iterations, warmup)))
    rows += await anyio.to_thread.run_sync(_httpserver_rows, iterations, warmup, ca)
    rows += await _respx_row(iterations, warmup)
    live, replayed = await _per_request(requests)

    print(f"\nsetup + one request + teardown, {iterations} iterations (ms); load {os.getloadavg()[0]:.1f}")
    print(f"{'case':48} {'p50':>8} {'p95':>8}")
    results: dict[str, Any] = {"setup_and_one_request": [], "per_request": {}}
    for name, samples in rows:
        print(f"{name:48} {p(samples, 0.5):8.2f} {p(samples, 0.95):8.2f}")
        results["setup_and_one_request"].append(
            {"name": name, "iterations": len(samples), "p50_ms": round(p(samples, 0.5), 3),
             "p95_ms": round(p(samples, 0.95), 3)}
        )
    overhead = statistics.median(replayed) - statistics.median(live)
    print(f"\none request on an open server, {requests} requests (ms)")
    print(f"{'live expectation':48} {p(live, 0.5):8.3f} {p(live, 0.95):8.3f}")
    print(f"{'replayed from a cassette':48} {p(replayed, 0.5):8.3f} {p(replayed, 0.95):8.3f}")
    print(f"{'replay overhead per request (p50 difference)':48} {overhead:8.3f}")
    results["per_request"] = {
        "requests": requests,
        "live_p50_ms": round(p(live, 0.5), 4),
        "replay_p50_ms": round(p(replayed, 0.5), 4),
        "replay_overhead_p50_ms": round(overhead, 4),
    }
    results["machine"] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    anyio.run(main, args.iterations, args.warmup, args.requests)
