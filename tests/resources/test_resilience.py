"""resilient_client and CircuitBreaker against isolated_http's fault injection (a real server),
with a ManualClock wherever time matters."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from isolated_env._errors import CircuitOpen, ConfigError
from isolated_env._resilience import (
    CircuitBreaker,
    CircuitState,
    ManualClock,
    RetryPolicy,
    SystemClock,
    resilient_client,
    retry_after,
)
from isolated_env.resources.http import HttpHandle, RecordedRequest, isolated_http

NO_JITTER = RetryPolicy(attempts=3, backoff=0.1, multiplier=2, jitter=0)

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


async def test_breaker_opens_fails_fast_and_closes_after_a_good_probe() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=10, clock=clock, name="users-api")
    async with isolated_http() as http, resilient_client(http.url, retry=None, breaker=breaker) as client:
        http.expect("GET", "/svc").times(3).fail(503)
        http.expect("GET", "/svc").respond_json({"ok": True})

        for n in range(3):
            assert breaker.state is CLOSED
            assert (await client.get("/svc")).status_code == 503
            assert breaker.consecutive_failures == n + 1
        assert breaker.state is OPEN

        # Open: the call fails fast, nothing reaches the server.
        with pytest.raises(CircuitOpen, match="circuit 'users-api' is open") as info:
            await client.get("/svc")
        assert info.value.retry_in == pytest.approx(10)
        assert len(http.requests) == 3

        clock.advance(9.9)
        assert breaker.state is OPEN
        clock.advance(0.1)
        assert breaker.state is HALF_OPEN

        response = await client.get("/svc")  # the probe
        assert response.json() == {"ok": True}
        assert breaker.state is CLOSED and breaker.consecutive_failures == 0
        assert breaker.transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
        assert len(http.requests) == 4


async def test_a_failed_probe_opens_the_circuit_again() -> None:
    clock = ManualClock()
    changes: list[tuple[CircuitState, CircuitState]] = []
    breaker = CircuitBreaker(
        failure_threshold=2, cooldown=5, clock=clock, on_change=lambda a, b: changes.append((a, b))
    )
    async with isolated_http() as http, resilient_client(http.url, retry=None, breaker=breaker) as client:
        http.expect("GET", "/svc").times(3).fail(500)
        http.expect("GET", "/svc").respond(200, "up")
        await client.get("/svc")
        await client.get("/svc")
        assert breaker.state is OPEN
        clock.advance(5)
        assert (await client.get("/svc")).status_code == 500  # probe fails
        assert breaker.state is OPEN and breaker.retry_in() == pytest.approx(5)
        with pytest.raises(CircuitOpen):
            await client.get("/svc")
        clock.advance(5)
        assert (await client.get("/svc")).text == "up"
        assert breaker.state is CLOSED
    assert changes == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]


async def test_half_open_lets_one_probe_through_at_a_time() -> None:
    clock = ManualClock()
    release = anyio.Event()

    async def slow_ok(request: RecordedRequest) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, text="ok")

    breaker = CircuitBreaker(failure_threshold=1, cooldown=1, clock=clock)
    async with isolated_http() as http, resilient_client(http.url, retry=None, breaker=breaker) as client:
        http.expect("GET", "/svc").times(1).fail(502)
        probe = http.expect("GET", "/svc").times(1).respond_with(slow_ok)
        await client.get("/svc")
        clock.advance(1)
        results: list[int] = []

        async def call() -> None:
            results.append((await client.get("/svc")).status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await probe.wait()
            with pytest.raises(CircuitOpen, match="half-open probe is still in flight"):
                await client.get("/svc")
            release.set()
        assert results == [200] and breaker.state is CLOSED


async def test_retries_back_off_exponentially_then_succeed() -> None:
    clock = ManualClock()
    async with isolated_http() as http, resilient_client(http.url, retry=NO_JITTER, clock=clock) as client:
        http.expect("GET", "/flaky").times(2).fail(503)
        http.expect("GET", "/flaky").respond_json({"ok": True})
        response = await client.get("/flaky")
        assert response.json() == {"ok": True}
        assert client.retries == 2
        assert clock.sleeps == [pytest.approx(0.1), pytest.approx(0.2)]
        assert client.breaker is not None and client.breaker.state is CLOSED


async def test_jitter_stays_within_its_bound() -> None:
    clock = ManualClock()
    policy = RetryPolicy(attempts=4, backoff=1, multiplier=3, jitter=0.5, max_backoff=5)
    async with isolated_http() as http, resilient_client(http.url, retry=policy, clock=clock) as client:
        http.expect("GET", "/down").fail(504)
        assert (await client.get("/down")).status_code == 504  # attempts exhausted: the last answer
        base = [1, 3, 5]  # 1, 3, 9 capped at 5
        assert len(clock.sleeps) == 3
        for slept, low in zip(clock.sleeps, base, strict=True):
            assert low <= slept <= low + 0.5
        assert len(http.requests) == 4


async def test_retry_after_is_honoured() -> None:
    clock = ManualClock()
    async with isolated_http() as http, resilient_client(http.url, retry=NO_JITTER, clock=clock) as client:
        http.expect("GET", "/limited").times(1).rate_limit(retry_after=7)
        http.expect("GET", "/limited").respond(200, "now")
        assert (await client.get("/limited")).text == "now"
        assert clock.sleeps == [7.0]


async def test_retry_after_beyond_the_limit_is_handed_back() -> None:
    clock = ManualClock()
    policy = RetryPolicy(max_retry_after=30)
    async with isolated_http() as http, resilient_client(http.url, retry=policy, clock=clock) as client:
        http.expect("GET", "/limited").rate_limit(retry_after=3600)
        response = await client.get("/limited")
        assert (response.status_code, response.headers["retry-after"]) == (429, "3600")
        assert clock.sleeps == [] and len(http.requests) == 1


async def test_post_is_not_retried_after_it_was_sent() -> None:
    clock = ManualClock()
    async with isolated_http() as http, resilient_client(http.url, retry=NO_JITTER, clock=clock) as client:
        http.expect("POST", "/orders").times(1).fail(503)
        http.expect("POST", "/orders").times(1).drop()
        assert (await client.post("/orders", json={"n": 1})).status_code == 503
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/orders", json={"n": 1})
        assert clock.sleeps == [] and len(http.requests) == 2


async def test_dropped_connections_are_retried_for_idempotent_methods() -> None:
    clock = ManualClock()
    async with isolated_http() as http, resilient_client(http.url, retry=NO_JITTER, clock=clock) as client:
        http.expect("PUT", "/doc").times(2).drop()
        http.expect("PUT", "/doc").respond(200, "stored")
        assert (await client.put("/doc", content=b"body")).text == "stored"
        assert [r.body for r in http.requests] == [b"body"] * 3  # the body was replayed each time


async def test_timeouts_are_retried_and_counted_by_the_breaker() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=2, cooldown=60, clock=clock)
    policy = RetryPolicy(attempts=5, backoff=0.1, jitter=0)
    async with (
        isolated_http() as http,
        resilient_client(http.url, retry=policy, breaker=breaker, clock=clock, timeout=0.05) as client,
    ):
        http.expect("GET", "/slow").delay(5)
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/slow")
        # Two timeouts opened the circuit, which stopped the retries early.
        assert breaker.state is OPEN and len(http.requests) == 2
        assert clock.sleeps == [pytest.approx(0.1)]


async def test_connection_refused_is_retried_for_any_method() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    clock = ManualClock()
    async with resilient_client(f"http://127.0.0.1:{port}", retry=NO_JITTER, clock=clock) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post("/x", content=b"payload")
        assert client.retries == 2 and len(clock.sleeps) == 2


async def test_breaker_stops_retries_and_the_last_answer_is_returned() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=30, clock=clock)
    policy = RetryPolicy(attempts=10, backoff=0.1, jitter=0)
    async with (
        isolated_http() as http,
        resilient_client(http.url, retry=policy, breaker=breaker, clock=clock) as client,
    ):
        http.expect("GET", "/down").fail(503)
        assert (await client.get("/down")).status_code == 503
        assert breaker.state is OPEN and len(http.requests) == 3
        with pytest.raises(CircuitOpen):
            await client.get("/down")
        assert len(http.requests) == 3


async def test_429_does_not_count_against_the_breaker_by_default() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=1, clock=clock)
    async with isolated_http() as http, resilient_client(http.url, retry=None, breaker=breaker) as client:
        http.expect("GET", "/busy").rate_limit(1)
        assert (await client.get("/busy")).status_code == 429
        assert breaker.state is CLOSED


async def test_a_streamed_upload_is_sent_once() -> None:
    async def upload() -> AsyncIterator[bytes]:
        yield b"part"

    clock = ManualClock()
    async with isolated_http() as http, resilient_client(http.url, retry=NO_JITTER, clock=clock) as client:
        http.expect("PUT", "/blob").fail(503)
        assert (await client.put("/blob", content=upload())).status_code == 503
        assert len(http.requests) == 1


async def test_streaming_responses_pass_through() -> None:
    async with isolated_http() as http, resilient_client(http.url) as client:
        http.expect("GET", "/big").slow_body(chunk_size=3, interval=0).respond(200, "abcdefgh")
        async with client.stream("GET", "/big") as response:
            assert b"".join([c async for c in response.aiter_bytes()]) == b"abcdefgh"


async def test_real_clock_works_end_to_end(isolated_http_handle: HttpHandle) -> None:
    http = isolated_http_handle
    policy = RetryPolicy(attempts=2, backoff=0.01, jitter=0)
    async with resilient_client(
        http.url, retry=policy, breaker=CircuitBreaker(clock=SystemClock())
    ) as client:
        http.expect("GET", "/x").times(1).fail(500)
        http.expect("GET", "/x").respond(200, "ok")
        assert (await client.get("/x")).text == "ok"


@pytest.fixture
async def isolated_http_handle() -> AsyncIterator[HttpHandle]:
    async with isolated_http() as http:
        yield http


def test_retry_after_header_forms() -> None:
    assert retry_after(httpx.Response(429, headers={"retry-after": "3"})) == 3
    assert retry_after(httpx.Response(429, headers={"retry-after": "0.5"})) == 0.5
    assert retry_after(httpx.Response(429, headers={"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0
    assert retry_after(httpx.Response(429, headers={"retry-after": "soon"})) is None
    assert retry_after(httpx.Response(429)) is None


def test_bad_configuration() -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigError):
        RetryPolicy(backoff=-1)
    with pytest.raises(ConfigError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ConfigError):
        CircuitBreaker(cooldown=-1)
    with pytest.raises(ConfigError):
        ManualClock().advance(-1)


def test_breaker_reset_closes() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=1, clock=clock)
    breaker.record_failure(breaker.before_call(), "boom")
    assert breaker.state is OPEN and breaker.last_failure == "boom"
    breaker.reset()
    assert breaker.state is CLOSED and breaker.retry_in() == 0
