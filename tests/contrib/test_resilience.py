"""ResilientTransport / resilient_client against isolated_http's fault injection (a real server),
with a ManualClock wherever time matters: attempts are counted, never timed."""

from __future__ import annotations

import email.utils
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import anyio
import httpx
import pytest

from isolated_env._errors import CircuitOpen, ConfigError
from isolated_env.contrib.resilience import (
    CircuitBreaker,
    CircuitState,
    ManualClock,
    ResilientTransport,
    RetryPolicy,
    SystemClock,
    resilient_client,
    retry_after,
)
from isolated_env.resources.http import HttpHandle, RecordedRequest, isolated_http

NO_JITTER = RetryPolicy(attempts=3, backoff=0.1, multiplier=2, jitter=0)
WALL = datetime(2030, 1, 1, tzinfo=UTC)

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class Recording(httpx.AsyncBaseTransport):
    """The real ``httpx.AsyncHTTPTransport``, keeping every response it handed out."""

    def __init__(self) -> None:
        self.real = httpx.AsyncHTTPTransport()
        self.responses: list[httpx.Response] = []
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        response = await self.real.handle_async_request(request)
        self.responses.append(response)
        return response

    async def aclose(self) -> None:
        await self.real.aclose()


def refused_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture
async def http() -> AsyncIterator[HttpHandle]:
    async with isolated_http() as handle:
        yield handle


# -- the circuit breaker -------------------------------------------------------------------------


async def test_breaker_opens_fails_fast_and_closes_after_a_good_probe(http: HttpHandle) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=10, clock=clock, name="users-api")
    async with resilient_client(http.url, retry=None, breaker=breaker) as client:
        http.expect("GET", "/svc").times(3).fail(503)
        http.expect("GET", "/svc").respond_json({"ok": True})

        for n in range(3):
            assert breaker.state is CLOSED
            assert (await client.get("/svc")).status_code == 503
            assert breaker.consecutive_failures == n + 1
        assert breaker.state is OPEN
        assert breaker.last_failure == f"503 Service Unavailable from GET {http.url}/svc"

        with pytest.raises(CircuitOpen, match="circuit 'users-api' is open") as info:
            await client.get("/svc")
        assert info.value.retry_in == pytest.approx(10) and info.value.name == "users-api"
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


async def test_an_open_circuit_does_not_touch_the_network() -> None:
    clock = ManualClock()
    inner = Recording()
    breaker = CircuitBreaker(failure_threshold=2, cooldown=10, clock=clock)
    transport = ResilientTransport(inner, retry=None, breaker=breaker, clock=clock)
    async with httpx.AsyncClient(transport=transport) as client:
        async with isolated_http() as http:
            http.expect("GET", "/svc").fail(500)
            await client.get(http.url_for("/svc"))
            await client.get(http.url_for("/svc"))
        # The server is gone: a request that reached the network would fail to connect.
        for _ in range(3):
            with pytest.raises(CircuitOpen):
                await client.get(http.url_for("/svc"))
    assert inner.calls == 2


async def test_a_failed_probe_opens_the_circuit_again(http: HttpHandle) -> None:
    clock = ManualClock()
    changes: list[tuple[CircuitState, CircuitState]] = []
    breaker = CircuitBreaker(
        failure_threshold=2, cooldown=5, clock=clock, on_change=lambda a, b: changes.append((a, b))
    )
    async with resilient_client(http.url, retry=None, breaker=breaker) as client:
        http.expect("GET", "/svc").times(3).fail(500)
        http.expect("GET", "/svc").respond(200, "up")
        await client.get("/svc")
        await client.get("/svc")
        assert breaker.state is OPEN
        clock.advance(5)
        assert (await client.get("/svc")).status_code == 500  # the probe fails
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


async def test_half_open_lets_one_probe_through_at_a_time(http: HttpHandle) -> None:
    clock = ManualClock()
    release = anyio.Event()

    async def slow_ok(request: RecordedRequest) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, text="ok")

    breaker = CircuitBreaker(failure_threshold=1, cooldown=1, clock=clock)
    async with resilient_client(http.url, retry=None, breaker=breaker) as client:
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
        assert len(http.requests) == 2


async def test_a_cancelled_probe_frees_the_probe_slot(http: HttpHandle) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=1, clock=clock)
    async with resilient_client(http.url, retry=None, breaker=breaker) as client:
        http.expect("GET", "/svc").times(1).fail(503)
        hung = http.expect("GET", "/svc").times(1).delay(60)
        http.expect("GET", "/svc").respond(200, "ok")
        await client.get("/svc")
        clock.advance(1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, "/svc")
            await hung.wait()
            tg.cancel_scope.cancel()
        assert breaker.state is HALF_OPEN  # the cancelled call gave no verdict
        assert (await client.get("/svc")).text == "ok"
        assert breaker.state is CLOSED


async def test_the_breaker_counts_every_request_through_its_transport(http: HttpHandle) -> None:
    async with (
        resilient_client(http.url, retry=None) as first,
        resilient_client(http.url, retry=None) as second,
    ):
        http.expect("GET", "/a").fail(500)
        http.expect("GET", "/b").fail(500)
        http.expect("GET", "/c").respond(200, "fine")
        for path in ["/a", "/b", "/a", "/b", "/a"]:  # five failures on two paths: one count
            await first.get(path)
        with pytest.raises(CircuitOpen):
            await first.get("/c")
        assert (await second.get("/c")).text == "fine"  # a transport of its own, a breaker of its own


async def test_one_breaker_can_be_shared_between_transports(http: HttpHandle) -> None:
    breaker = CircuitBreaker(failure_threshold=2, clock=ManualClock())
    async with (
        resilient_client(http.url, retry=None, breaker=breaker) as first,
        resilient_client(http.url, retry=None, breaker=breaker) as second,
    ):
        http.expect("GET", "/svc").fail(503)
        await first.get("/svc")
        await second.get("/svc")
        for client in (first, second):
            with pytest.raises(CircuitOpen):
                await client.get("/svc")
        assert len(http.requests) == 2


async def test_429_does_not_count_against_the_breaker_by_default(http: HttpHandle) -> None:
    breaker = CircuitBreaker(failure_threshold=1, clock=ManualClock())
    async with resilient_client(http.url, retry=None, breaker=breaker) as client:
        http.expect("GET", "/busy").rate_limit(1)
        assert (await client.get("/busy")).status_code == 429
        assert breaker.state is CLOSED


# -- retries -------------------------------------------------------------------------------------


async def test_retries_back_off_exponentially_then_succeed(http: HttpHandle) -> None:
    clock = ManualClock()
    transport = ResilientTransport(retry=NO_JITTER, clock=clock)
    async with httpx.AsyncClient(transport=transport, base_url=http.url) as client:
        http.expect("GET", "/flaky").times(2).fail(503)
        http.expect("GET", "/flaky").respond_json({"ok": True})
        response = await client.get("/flaky")
        assert response.json() == {"ok": True}
        assert transport.retries == 2 and len(http.requests) == 3
        assert clock.sleeps == [pytest.approx(0.1), pytest.approx(0.2)]
        assert transport.breaker is not None and transport.breaker.state is CLOSED


async def test_jitter_stays_within_its_bound(http: HttpHandle) -> None:
    clock = ManualClock()
    policy = RetryPolicy(attempts=4, backoff=1, multiplier=3, jitter=0.5, max_backoff=5)
    async with resilient_client(http.url, retry=policy, clock=clock) as client:
        http.expect("GET", "/down").fail(504)
        assert (await client.get("/down")).status_code == 504  # attempts exhausted: the last answer
        base = [1, 3, 5]  # 1, 3, 9 capped at 5
        assert len(clock.sleeps) == 3
        for slept, low in zip(clock.sleeps, base, strict=True):
            assert low <= slept <= low + 0.5
        assert len(http.requests) == 4


async def test_retried_responses_are_closed_and_the_last_is_handed_back_open(http: HttpHandle) -> None:
    inner = Recording()
    transport = ResilientTransport(inner, retry=NO_JITTER, clock=ManualClock())
    async with httpx.AsyncClient(transport=transport, base_url=http.url) as client:
        http.expect("GET", "/down").fail(503, body="still down")
        async with client.stream("GET", "/down") as response:
            assert [r.is_closed for r in inner.responses] == [True, True, False]
            assert response.status_code == 503
            assert await response.aread() == b"still down"  # the caller can still read it


async def test_retry_after_in_seconds_is_honoured(http: HttpHandle) -> None:
    clock = ManualClock()
    async with resilient_client(http.url, retry=NO_JITTER, clock=clock) as client:
        http.expect("GET", "/limited").times(1).rate_limit(retry_after=7)
        http.expect("GET", "/limited").respond(200, "now")
        assert (await client.get("/limited")).text == "now"
        assert clock.sleeps == [7.0]


async def test_retry_after_as_an_http_date_is_honoured(http: HttpHandle) -> None:
    clock = ManualClock(wall=WALL)
    date = email.utils.format_datetime(WALL + timedelta(seconds=42), usegmt=True)
    async with resilient_client(http.url, retry=NO_JITTER, clock=clock) as client:
        http.expect("GET", "/maintenance").times(1).respond(503, "back soon", {"retry-after": date})
        past = {"retry-after": "Sat, 01 Jan 2000 00:00:00 GMT"}
        http.expect("GET", "/maintenance").times(1).respond(503, "back", past)
        http.expect("GET", "/maintenance").respond(200, "up")
        assert (await client.get("/maintenance")).text == "up"
        assert clock.sleeps == [42.0, 0.0]  # a date already past: retry at once


async def test_retry_after_beyond_the_limit_is_handed_back(http: HttpHandle) -> None:
    clock = ManualClock()
    policy = RetryPolicy(max_retry_after=30)
    async with resilient_client(http.url, retry=policy, clock=clock) as client:
        http.expect("GET", "/limited").rate_limit(retry_after=3600)
        response = await client.get("/limited")
        assert (response.status_code, response.headers["retry-after"]) == (429, "3600")
        assert clock.sleeps == [] and len(http.requests) == 1


async def test_post_is_not_retried_after_it_was_sent(http: HttpHandle) -> None:
    clock = ManualClock()
    async with resilient_client(http.url, retry=NO_JITTER, clock=clock) as client:
        http.expect("POST", "/orders").times(1).fail(503)
        http.expect("POST", "/orders").times(1).rate_limit(1)
        http.expect("POST", "/orders").times(1).drop()
        assert (await client.post("/orders", json={"n": 1})).status_code == 503
        assert (await client.post("/orders", json={"n": 1})).status_code == 429
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/orders", json={"n": 1})
        assert clock.sleeps == [] and len(http.requests) == 3


async def test_the_retried_methods_are_configurable(http: HttpHandle) -> None:
    clock = ManualClock()
    policy = RetryPolicy(attempts=2, jitter=0, methods={"post"})
    async with resilient_client(http.url, retry=policy, clock=clock) as client:
        http.expect("POST", "/jobs").times(1).fail(503)
        http.expect("POST", "/jobs").respond(201, "queued")
        http.expect("GET", "/jobs").fail(503)
        assert (await client.post("/jobs", json={"n": 1})).text == "queued"
        assert (await client.get("/jobs")).status_code == 503
        assert len(http.requests) == 3


async def test_dropped_connections_are_retried_for_idempotent_methods(http: HttpHandle) -> None:
    clock = ManualClock()
    async with resilient_client(http.url, retry=NO_JITTER, clock=clock) as client:
        http.expect("PUT", "/doc").times(1).drop()
        http.expect("PUT", "/doc").times(1).drop(reset=True)
        http.expect("PUT", "/doc").respond(200, "stored")
        assert (await client.put("/doc", content=b"body")).text == "stored"
        assert [r.body for r in http.requests] == [b"body"] * 3  # the body was replayed each time


async def test_timeouts_are_retried_and_counted_by_the_breaker(http: HttpHandle) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=2, cooldown=60, clock=clock)
    policy = RetryPolicy(attempts=5, backoff=0.1, jitter=0)
    timeout = httpx.Timeout(0.05, connect=10.0)  # a loaded machine may take 50 ms to connect: only reads time out
    async with resilient_client(http.url, retry=policy, breaker=breaker, clock=clock, timeout=timeout) as client:
        http.expect("GET", "/slow").delay(60)
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/slow")
        # Two timeouts opened the circuit, which stopped the retries early.
        assert breaker.state is OPEN and len(http.requests) == 2
        assert clock.sleeps == [pytest.approx(0.1)]


async def test_connection_refused_is_retried_for_any_method_and_opens_the_circuit() -> None:
    clock = ManualClock()
    inner = Recording()
    breaker = CircuitBreaker(failure_threshold=3, clock=clock)
    transport = ResilientTransport(inner, retry=NO_JITTER, breaker=breaker, clock=clock)
    async with httpx.AsyncClient(transport=transport, base_url=refused_url()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post("/x", content=b"payload")  # nothing was sent: safe to retry
        assert transport.retries == 2 and inner.calls == 3 and len(clock.sleeps) == 2
        assert breaker.state is OPEN
        with pytest.raises(CircuitOpen, match="ConnectError"):
            await client.post("/x", content=b"payload")
        assert inner.calls == 3


async def test_an_opening_breaker_stops_retries_and_the_last_answer_is_returned(http: HttpHandle) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=30, clock=clock)
    policy = RetryPolicy(attempts=10, backoff=0.1, jitter=0)
    async with resilient_client(http.url, retry=policy, breaker=breaker, clock=clock) as client:
        http.expect("GET", "/down").fail(503)
        assert (await client.get("/down")).status_code == 503
        assert breaker.state is OPEN and len(http.requests) == 3
        with pytest.raises(CircuitOpen):
            await client.get("/down")
        assert len(http.requests) == 3


async def test_a_streamed_upload_is_sent_once(http: HttpHandle) -> None:
    async def upload() -> AsyncIterator[bytes]:
        yield b"part"

    async with resilient_client(http.url, retry=NO_JITTER, clock=ManualClock()) as client:
        http.expect("PUT", "/blob").fail(503)
        assert (await client.put("/blob", content=upload())).status_code == 503
        assert len(http.requests) == 1


async def test_streaming_responses_pass_through(http: HttpHandle) -> None:
    async with resilient_client(http.url) as client:
        http.expect("GET", "/big").slow_body(chunk_size=3, interval=0).respond(200, "abcdefgh")
        async with client.stream("GET", "/big") as response:
            with pytest.raises(httpx.ResponseNotRead):  # not read ahead: streamed as it comes
                _ = response.content
            assert b"".join([c async for c in response.aiter_bytes()]) == b"abcdefgh"


async def test_real_clock_works_end_to_end(http: HttpHandle) -> None:
    policy = RetryPolicy(attempts=2, backoff=0.01, jitter=0)
    async with resilient_client(http.url, retry=policy, breaker=CircuitBreaker(clock=SystemClock())) as client:
        http.expect("GET", "/x").times(1).fail(500)
        http.expect("GET", "/x").respond(200, "ok")
        assert (await client.get("/x")).text == "ok"


# -- resilient_client ----------------------------------------------------------------------------


async def test_resilient_client_is_a_plain_async_client_with_other_options_passed_on(http: HttpHandle) -> None:
    http.expect("GET", "/who", headers={"x-app": "shop"}).respond(200, "hi")
    async with resilient_client(http.url, headers={"x-app": "shop"}, http2=False, trust_env=False) as client:
        assert type(client) is httpx.AsyncClient
        assert (await client.get("/who")).text == "hi"


def test_resilient_client_refuses_options_httpx_would_ignore() -> None:
    with pytest.raises(ConfigError, match="inner="):
        resilient_client(transport=httpx.AsyncHTTPTransport())
    with pytest.raises(ConfigError, match=r"verify=.*configure the inner transport"):
        resilient_client(inner=httpx.AsyncHTTPTransport(), verify=False)
    with pytest.raises(ConfigError, match="AsyncBaseTransport"):
        ResilientTransport(object())  # type: ignore[arg-type]


def test_importing_isolated_env_does_not_load_the_contrib_client() -> None:
    code = (
        "import sys, isolated_env\nprint('tenacity' in sys.modules, 'isolated_env.contrib.resilience' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- pieces --------------------------------------------------------------------------------------


def test_retry_after_header_forms() -> None:
    now = WALL.timestamp()
    assert retry_after(httpx.Response(429, headers={"retry-after": "3"})) == 3
    assert retry_after(httpx.Response(429, headers={"retry-after": " 0.5 "})) == 0.5
    assert retry_after(httpx.Response(429, headers={"retry-after": "-4"})) == 0
    assert retry_after(httpx.Response(503, headers={"retry-after": "Tue, 01 Jan 2030 00:01:00 GMT"}), now=now) == 60
    assert retry_after(httpx.Response(503, headers={"retry-after": "Tue, 01 Jan 2030 00:01:00 -0000"}), now=now) == 60
    assert retry_after(httpx.Response(503, headers={"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}), now=now) == 0
    assert retry_after(httpx.Response(429, headers={"retry-after": "soon"})) is None
    assert retry_after(httpx.Response(429, headers={"retry-after": "nan"})) is None
    assert retry_after(httpx.Response(429)) is None


def test_manual_clock_moves_both_clocks_together() -> None:
    clock = ManualClock(5, wall=WALL)
    clock.advance(2.5)
    assert (clock.now(), clock.time()) == (7.5, WALL.timestamp() + 2.5)
    with pytest.raises(ConfigError):
        clock.advance(-1)
    with pytest.raises(ConfigError):
        ManualClock(wall=datetime(2030, 1, 1))  # naive: ambiguous


def test_bad_configuration() -> None:
    for bad in ({"attempts": 0}, {"attempts": True}, {"backoff": -1}, {"multiplier": 0.5}, {"jitter": "x"}):
        with pytest.raises(ConfigError):
            RetryPolicy(**bad)
    for bad_breaker in ({"failure_threshold": 0}, {"cooldown": -1}, {"half_open_max_calls": 1.5}):
        with pytest.raises(ConfigError):
            CircuitBreaker(**bad_breaker)


def test_breaker_reset_closes() -> None:
    breaker = CircuitBreaker(failure_threshold=1, clock=ManualClock())
    breaker.record_failure(breaker.before_call(), "boom")
    assert breaker.state is OPEN and breaker.last_failure == "boom"
    breaker.reset()
    assert breaker.state is CLOSED and breaker.retry_in() == 0
