"""isolated_http against its real server, with real httpx clients (no mocks)."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Callable

import anyio
import httpx
import psutil
import pytest

from isolated_env._environment import Environment
from isolated_env._errors import ConfigError, ResourceCheckFailed
from isolated_env.resources.http import HttpHandle, RecordedRequest, isolated_http


async def test_respond_json_and_the_request_log() -> None:
    async with isolated_http() as http:
        assert http.url.startswith("http://127.0.0.1:")
        http.expect("GET", "/users/1").respond_json({"id": 1, "email": "a@example.com"})
        response = await http.client.get("/users/1", headers={"x-trace": "t1"})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"id": 1, "email": "a@example.com"}
        [request] = http.requests
        assert (request.method, request.path, request.headers["x-trace"]) == ("GET", "/users/1", "t1")
        assert request.url == http.url_for("/users/1")


async def test_respond_with_status_body_and_headers() -> None:
    async with isolated_http() as http:
        http.expect("POST", "/items").respond(201, "created", {"location": "/items/9"})
        http.expect("DELETE", "/items/9").respond(204)
        created = await http.client.post("/items", content=b"x")
        assert (created.status_code, created.text, created.headers["location"]) == (
            201,
            "created",
            "/items/9",
        )
        assert created.headers["content-type"] == "text/plain; charset=utf-8"
        deleted = await http.client.delete("/items/9")
        assert (deleted.status_code, deleted.content) == (204, b"")


async def test_matching_on_query_json_body_headers_regex_and_predicate() -> None:
    async with isolated_http() as http:
        http.expect("GET", "/search", query={"q": "x", "tag": ["a", "b"]}).respond_json("query")
        http.expect("POST", "/users", json={"name": "ann"}).respond_json("json")
        http.expect("PUT", "/raw", body="exact bytes").respond_json("body")
        http.expect("GET", "/auth", headers={"Authorization": "Bearer t"}).respond_json("headers")
        http.expect("GET", re.compile(r"/orders/\d+")).respond_json("regex")
        http.expect("GET", "/pred", match=lambda r: r.query.get("n") == "2").respond_json("predicate")

        client = http.client
        assert (
            await client.get("/search", params=[("tag", "a"), ("q", "x"), ("tag", "b")])
        ).json() == "query"
        assert (await client.post("/users", json={"name": "ann"})).json() == "json"
        assert (await client.put("/raw", content=b"exact bytes")).json() == "body"
        assert (
            await client.get("/auth", headers={"authorization": "Bearer t", "x-other": "1"})
        ).json() == "headers"
        assert (await client.get("/orders/42")).json() == "regex"
        assert (await client.get("/pred?n=2")).json() == "predicate"
        http.check()


async def test_unmatched_request_is_a_500_and_a_readable_problem() -> None:
    async with isolated_http() as http:
        http.expect("POST", "/users", json={"name": "ann", "age": 3}).respond(201)
        response = await http.client.post("/users", json={"name": "bob", "age": 3})
        assert response.status_code == 500
        assert "matched no expectation" in response.text
        with pytest.raises(ResourceCheckFailed) as info:
            http.check()
        text = str(info.value)
        assert "POST /users matched no expectation" in text
        assert '-  "name": "ann"' in text and '+  "name": "bob"' in text
        assert "expected POST /users" in text and "never requested" in text
        # Recorded problems are raised once; the unmet expectation is state and stays until met.
        await http.client.post("/users", json={"name": "ann", "age": 3})
        http.check()


async def test_unmatched_and_unmet_are_raised_on_exit() -> None:
    with pytest.raises(ResourceCheckFailed) as info:
        async with isolated_http() as http:
            http.expect("GET", "/needed").times(2).respond_json({})
            http.expect("GET", "/maybe").optional()
            await http.client.get("/needed")
            await http.client.get("/nobody-expects-this")
    text = str(info.value)
    assert "2 problem(s)" in text
    assert "GET /nobody-expects-this matched no expectation" in text
    assert "expected GET /needed 2 time(s), it was requested 1 time(s)" in text
    assert "/maybe" not in text.split("closest expectations:")[0]


async def test_no_expectations_means_every_request_is_a_problem() -> None:
    async with isolated_http() as http:
        http.assert_no_requests()
        response = await http.client.get("/x")
        assert response.status_code == 500
        with pytest.raises(ResourceCheckFailed, match="expected no requests, it received 1"):
            http.assert_no_requests()
        with pytest.raises(ResourceCheckFailed, match="no expectations were declared"):
            http.check()


async def test_times_then_the_next_expectation_answers() -> None:
    async with isolated_http() as http:
        http.expect("GET", "/flaky").times(2).fail(503)
        http.expect("GET", "/flaky").times(1).respond_json({"ok": True})
        statuses = [(await http.client.get("/flaky")).status_code for _ in range(3)]
        assert statuses == [503, 503, 200]
        response = await http.client.get("/flaky")
        assert response.status_code == 500
        assert "allows 2 request(s) and has had them all" in response.text
        with pytest.raises(ResourceCheckFailed):
            http.check()


async def test_times_zero_forbids_a_request() -> None:
    async with isolated_http() as http:
        http.expect("DELETE", "/everything").times(0)
        assert (await http.client.delete("/everything")).status_code == 500
        with pytest.raises(ResourceCheckFailed, match="allows 0 request"):
            http.check()


async def test_ordered_expectations() -> None:
    async with isolated_http() as http:
        http.expect("POST", "/login", ordered=True).respond_json({"token": "t"})
        http.expect("GET", "/profile", ordered=True).respond_json({"name": "ann"})
        assert (await http.client.get("/profile")).status_code == 500
        with pytest.raises(ResourceCheckFailed, match="arrived out of order"):
            http.check()
        assert (await http.client.post("/login")).json() == {"token": "t"}
        assert (await http.client.get("/profile")).json() == {"name": "ann"}
        http.check()


async def test_respond_with_a_function_of_the_request() -> None:
    async with isolated_http() as http:

        async def create(request: RecordedRequest) -> httpx.Response:
            return httpx.Response(201, json={"echo": request.json(), "q": request.query.get("v")})

        http.expect("POST", "/echo").respond_with(create)
        http.expect("GET", "/sync").respond_with(lambda r: httpx.Response(202, text=r.headers["x-a"]))
        response = await http.client.post("/echo?v=1", json={"a": [1, 2]})
        assert (response.status_code, response.json()) == (201, {"echo": {"a": [1, 2]}, "q": "1"})
        response = await http.client.get("/sync", headers={"x-a": "hello"})
        assert (response.status_code, response.text) == (202, "hello")


async def test_a_streamed_response() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            yield part

    async with isolated_http() as http:
        http.expect("GET", "/events").respond_with(
            lambda r: httpx.Response(200, content=chunks(), headers={"content-type": "text/event-stream"})
        )
        async with http.client.stream("GET", "/events") as response:
            body = b"".join([part async for part in response.aiter_bytes()])
        assert body == b"data: 1\n\ndata: 2\n\n"


async def test_responder_error_is_a_500_and_its_cause_is_kept() -> None:
    async with isolated_http() as http:
        http.expect("GET", "/boom").respond_with(lambda r: 1 / 0)  # type: ignore[arg-type,return-value]
        response = await http.client.get("/boom")
        assert response.status_code == 500
        with pytest.raises(
            ResourceCheckFailed, match="responder of GET /boom raised ZeroDivisionError"
        ) as info:
            http.check()
        [cause] = info.value.causes
        assert isinstance(cause, ZeroDivisionError)
        assert info.value.__cause__ is None  # told once, with where it was raised: not a second traceback
        assert "test_http.py" in str(info.value)


async def test_problems_become_a_note_when_the_test_already_failed() -> None:
    with pytest.raises(AssertionError) as info:
        async with isolated_http() as http:
            await http.client.get("/unexpected")
            raise AssertionError("the test's own failure")
    assert "the test's own failure" in str(info.value)
    assert any("GET /unexpected matched no expectation" in note for note in info.value.__notes__)


async def test_a_slow_response_does_not_block_other_requests() -> None:
    fast_done = anyio.Event()
    order: list[str] = []

    async def slow(request: RecordedRequest) -> httpx.Response:
        await fast_done.wait()  # answers only once the other request has completed
        return httpx.Response(200, text="slow")

    async with isolated_http() as http:
        http.expect("GET", "/slow").respond_with(slow)
        http.expect("GET", "/fast").respond(200, "fast")

        async def get(path: str) -> None:
            response = await http.client.get(path)
            order.append(response.text)
            if path == "/fast":
                fast_done.set()

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(get, "/slow")
                await http.expectations[0].wait()
                tg.start_soon(get, "/fast")
    assert order == ["fast", "slow"]


async def test_fault_delay() -> None:
    async with isolated_http() as http:
        http.expect("GET", "/late").delay(2).respond(200, "late")
        with pytest.raises(httpx.ReadTimeout):  # the connect may take longer on a loaded machine
            await http.client.get("/late", timeout=httpx.Timeout(10, read=0.05))
        http.expect("GET", "/short").delay(0.01).respond(200, "ok")
        assert (await http.client.get("/short")).text == "ok"


# A reset surfaces as ReadError or RemoteProtocolError depending on when the RST lands.
@pytest.mark.parametrize(
    ("reset", "error"), [(False, httpx.RemoteProtocolError), (True, httpx.TransportError)]
)
async def test_fault_drop(reset: bool, error: type[Exception]) -> None:
    async with isolated_http() as http:
        http.expect("GET", "/gone").times(1).drop(reset=reset)
        http.expect("GET", "/gone").respond(200, "back")
        with pytest.raises(error):
            await http.client.get("/gone")
        assert (await http.client.get("/gone")).text == "back"
        assert len(http.requests) == 2


async def test_fault_5xx_and_rate_limit() -> None:
    async with isolated_http() as http:
        http.expect("GET", "/down").fail(503)
        http.expect("GET", "/busy").rate_limit(retry_after=2)
        http.expect("GET", "/busy2").rate_limit(retry_after=0.25)
        down = await http.client.get("/down")
        assert down.status_code == 503 and "injected" in down.text
        busy = await http.client.get("/busy")
        assert (busy.status_code, busy.headers["retry-after"]) == (429, "2")
        assert (await http.client.get("/busy2")).headers["retry-after"] == "0.25"
        with pytest.raises(ConfigError):
            http.expect("GET", "/x").optional().fail(404)


async def test_fault_slow_body() -> None:
    async with isolated_http() as http:
        http.expect("GET", "/trickle").slow_body(chunk_size=4, interval=0.01).respond(200, "0123456789")
        chunks = []
        async with http.client.stream("GET", "/trickle") as response:
            assert response.headers["content-length"] == "10"
            async for chunk in response.aiter_raw():
                chunks.append(chunk)
        assert b"".join(chunks) == b"0123456789" and len(chunks) == 3
        http.expect("GET", "/stall").slow_body(chunk_size=1, interval=5).respond(200, "ab")
        with pytest.raises(httpx.ReadTimeout):
            await http.client.get("/stall", timeout=httpx.Timeout(5, read=0.1))


async def test_head_gets_the_length_but_no_body() -> None:
    async with isolated_http() as http:
        http.expect("HEAD", "/file").respond(200, b"12345")
        response = await http.client.head("/file")
        assert (response.status_code, response.headers["content-length"], response.content) == (200, "5", b"")


async def test_other_clients_reach_the_same_server() -> None:
    async with isolated_http() as http, httpx.AsyncClient() as own:
        http.expect("GET", "/shared").times(2).respond(200, "same")
        assert (await own.get(http.url_for("shared"))).text == "same"
        assert (await http.client.get("/shared")).text == "same"


async def test_malformed_request_is_a_problem() -> None:
    with pytest.raises(ResourceCheckFailed, match="malformed request"):
        async with isolated_http() as http:
            port = int(http.url.rsplit(":", 1)[1])
            stream = await anyio.connect_tcp("127.0.0.1", port)
            async with stream:
                await stream.send(b"NOT HTTP AT ALL\r\n\r\n")
                reply = await stream.receive()
            assert reply.startswith(b"HTTP/1.1 400")


async def test_reset_clears_requests_expectations_and_cookies() -> None:
    with pytest.raises(ResourceCheckFailed, match=r"\(before reset 1\) expected GET /never"):
        async with Environment() as env:
            http: HttpHandle = await env.enter(isolated_http())
            http.expect("GET", "/login").respond(200, "in", {"set-cookie": "session=abc; Path=/"})
            http.expect("GET", "/never")
            await http.client.get("/login")
            assert http.client.cookies.get("session") == "abc"

            await env.reset()

            assert http.requests == [] and http.expectations == [] and not http.client.cookies
            http.expect("GET", "/again").respond(200, "clean")
            assert (await http.client.get("/again")).text == "clean"
            http.check()  # the unmet expectation from before the reset is raised on exit


async def test_server_is_gone_after_exit() -> None:
    async with isolated_http() as http:
        port = int(http.url.rsplit(":", 1)[1])
        client = http.client
    assert client.is_closed
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


async def test_a_connection_accepted_as_the_server_closes_is_closed_too() -> None:
    # A client connects in the last loop iterations before the exit closes the server (each
    # `settle` puts the close one iteration later); whenever the server took the connection, it
    # must close it too, not leave it open (CLOSE_WAIT) until garbage collection.
    for settle in range(8):
        async with isolated_http() as http:
            port = int(http.url.rsplit(":", 1)[1])
            client = socket.create_connection(("127.0.0.1", port))  # loopback: done in the kernel
            for _ in range(settle):
                await asyncio.sleep(0)
        client.close()
        left = [c for c in psutil.Process().net_connections(kind="inet") if c.laddr and c.laddr.port == port]
        assert left == [], f"settle={settle}: the server side of the connection is still open"


async def test_bad_arguments() -> None:
    async with isolated_http() as http:
        builds: list[Callable[[], object]] = [
            lambda: http.expect("GET", "no-slash"),
            lambda: http.expect("", "/x"),
            lambda: http.expect("POST", "/x", json={}, body=b"x"),
            lambda: http.expect("GET", "/x").optional().times(-1),
            lambda: http.expect("GET", "/x").optional().respond(999),
            lambda: http.expect("GET", "/x").optional().delay(-1),
            lambda: http.expect("GET", "/x").optional().slow_body(chunk_size=0),
        ]
        for build in builds:
            with pytest.raises(ConfigError):
                build()
