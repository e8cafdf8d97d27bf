"""Hard-coded hosts routed to isolated_http over real sockets, and the network guard."""

from __future__ import annotations

import os
import socket

import aiohttp
import anyio.to_thread
import httpx
import pytest
import requests

from isolated_env._errors import ConfigError, ResourceCheckFailed
from isolated_env.resources.http import isolated_http


async def test_the_handed_out_client_reaches_a_routed_host_over_tls_with_its_name() -> None:
    async with isolated_http(tls=True, hosts=["api.stripe.com"]) as http:
        http.expect("POST", "/v1/charges", host="api.stripe.com", form={"amount": "100"}).respond_json({"id": "ch_1"})
        response = await http.client.post("https://api.stripe.com/v1/charges", data={"amount": "100"})
        assert response.json() == {"id": "ch_1"}
        [request] = http.requests
        assert request.headers["host"] == "api.stripe.com"
        assert request.url == "https://api.stripe.com/v1/charges"


async def test_a_route_added_later_and_a_wildcard_and_a_plain_server() -> None:
    async with isolated_http() as http:
        http.route("*.example.com")
        http.expect("GET", "/a").respond(200, "a")
        # https to a plain server is served plainly: the route decides where it goes, not the scheme
        assert (await http.client.get("https://eu.example.com/a")).text == "a"
        assert http.hosts == ["*.example.com"]
        with pytest.raises(ConfigError, match="without scheme"):
            http.route("https://api.example.com/v1")


async def test_other_hosts_are_refused_and_recorded_unless_allowed() -> None:
    with pytest.raises(ResourceCheckFailed, match=r"'elsewhere\.test' was refused"):
        async with isolated_http(allow_hosts=["allowed.test"]) as http:
            with pytest.raises(httpx.ConnectError, match=r"refused a connection to 'elsewhere\.test'"):
                await http.client.get("https://elsewhere.test/")
            with pytest.raises(httpx.ConnectError) as info:  # allowed: a real lookup, which fails here
                await http.client.get("http://allowed.test/")
            assert "refused" not in str(info.value)


async def test_intercept_reaches_clients_the_code_builds_itself() -> None:
    before = (socket.getaddrinfo, httpx.AsyncClient.__init__, httpx.Client.__init__, aiohttp.TCPConnector.__init__)
    environ = dict(os.environ)
    async with isolated_http(tls=True, hosts=["api.example.com"], intercept=True) as http:
        http.expect("GET", "/v1/who").respond_json({"ok": True})
        async with httpx.AsyncClient() as own:
            assert (await own.get("https://api.example.com/v1/who")).json() == {"ok": True}

        def sync_calls() -> list[object]:
            with httpx.Client() as client:
                first = client.get("https://api.example.com/v1/who").json()
            second = requests.get("https://api.example.com/v1/who", timeout=10).json()
            return [first, second]

        assert await anyio.to_thread.run_sync(sync_calls) == [{"ok": True}, {"ok": True}]
        async with aiohttp.ClientSession() as session:
            async with session.get("https://api.example.com/v1/who") as response:
                assert await response.json() == {"ok": True}
        assert [r.headers["host"] for r in http.requests] == ["api.example.com"] * 4

        with pytest.raises(socket.gaierror, match=r"refused a connection to 'example\.org'"):
            socket.getaddrinfo("example.org", 443)
        with pytest.raises(requests.ConnectionError, match="refused"):
            await anyio.to_thread.run_sync(lambda: requests.get("http://example.org/", timeout=10))
        with pytest.raises(ResourceCheckFailed) as info:
            http.check()  # seen here: the exit need not raise them again
        assert str(info.value).count("'example.org' was refused") == 1  # told once per host
    after = (socket.getaddrinfo, httpx.AsyncClient.__init__, httpx.Client.__init__, aiohttp.TCPConnector.__init__)
    assert after == before
    assert dict(os.environ) == environ


async def test_the_hosts_of_external_services_are_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_POSTGRES_HOST", "db.fleet.test")
    monkeypatch.setenv("TEST_REDIS_URL", "redis://:pw@cache.fleet.test:6379/0")
    async with isolated_http(intercept=True) as http:
        for host in ("db.fleet.test", "cache.fleet.test"):  # a real lookup (.test never resolves)
            with pytest.raises(socket.gaierror) as info:
                await anyio.to_thread.run_sync(socket.getaddrinfo, host, 5432)
            assert "refused" not in str(info.value)
        with pytest.raises(socket.gaierror, match="refused"):
            socket.getaddrinfo("other.fleet.test", 5432)
        with pytest.raises(ResourceCheckFailed, match=r"'other\.fleet\.test' was refused"):
            http.check()


async def test_sync_client_and_a_transport_for_a_client_of_ones_own() -> None:
    async with isolated_http(hosts=["svc.internal"]) as http:
        http.expect("GET", "/ping").respond(200, "pong")
        assert await anyio.to_thread.run_sync(lambda: http.sync_client.get("http://svc.internal/ping").text) == "pong"
        async with httpx.AsyncClient(transport=http.transport()) as own:
            assert (await own.get("http://svc.internal/ping")).text == "pong"


async def test_two_intercepting_servers_share_the_process_and_a_failing_body_still_undoes_the_patch() -> None:
    original = socket.getaddrinfo
    with pytest.raises(RuntimeError, match="the test's own"):
        async with isolated_http(hosts=["a.test"], intercept=True) as a:
            async with isolated_http(hosts=["b.test"], intercept=True) as b:
                a.expect("GET", "/").respond(200, "a")
                b.expect("GET", "/").respond(200, "b")
                async with httpx.AsyncClient() as own:
                    assert [(await own.get(f"http://{h}/")).text for h in ("a.test", "b.test")] == ["a", "b"]
            assert socket.getaddrinfo is not original  # a is still intercepting
            raise RuntimeError("the test's own failure")
    assert socket.getaddrinfo is original
