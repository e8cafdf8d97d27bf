"""TLS for isolated_http and isolated_ws: the run's test CA, over real sockets and real clients."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys

import anyio.to_thread
import httpx
import pytest
import websockets

from isolated_env._errors import ConfigError, ResourceCheckFailed
from isolated_env.resources.http import isolated_http
from isolated_env.resources.ws import isolated_ws


async def test_https_with_a_certificate_the_handed_out_client_trusts() -> None:
    async with isolated_http(tls=True) as http:
        assert http.url.startswith("https://127.0.0.1:")
        http.expect("GET", "/users/1").respond_json({"id": 1})
        response = await http.client.get("/users/1")
        assert response.json() == {"id": 1}
        assert http.requests[0].url == http.url_for("/users/1")
        assert http.ca_path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        assert set(http.env) == {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"}


async def test_the_certificate_names_localhost_and_a_client_without_the_ca_is_refused() -> None:
    async with isolated_http(tls=True) as http:
        http.expect("GET", "/x").respond(200, "ok")
        port = http.url.rsplit(":", 1)[1]
        async with httpx.AsyncClient(verify=http.ssl_context, trust_env=False) as client:
            assert (await client.get(f"https://localhost:{port}/x")).text == "ok"
        async with httpx.AsyncClient(trust_env=False) as stranger:  # the system CAs only
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await stranger.get(http.url_for("/x"))


async def test_plain_http_to_a_tls_server_is_a_problem_naming_the_fix() -> None:
    with pytest.raises(ResourceCheckFailed, match=r"TLS handshake failed.*ssl_context"):
        async with isolated_http(tls=True) as http:
            async with httpx.AsyncClient(trust_env=False) as client:
                with pytest.raises(httpx.HTTPError):
                    await client.get(http.url.replace("https://", "http://") + "/x")


async def test_a_subprocess_trusts_the_server_through_env() -> None:
    async with isolated_http(tls=True) as http:
        http.expect("GET", "/ping").respond_json({"pong": True})
        code = f"import urllib.request; print(urllib.request.urlopen({http.url_for('/ping')!r}).read().decode())"
        # in a worker thread: the server answers from this event loop
        done = await anyio.to_thread.run_sync(
            lambda: subprocess.run([sys.executable, "-c", code], env={**http.env}, capture_output=True, text=True,
                                   timeout=60)
        )
        assert json.loads(done.stdout) == {"pong": True}, done.stderr


async def test_plain_handles_have_no_ca() -> None:
    async with isolated_http() as http:
        with pytest.raises(ConfigError, match="tls=True"):
            http.ca_path  # noqa: B018 - the property raises


async def test_wss_with_the_handed_out_client_and_a_websockets_client_of_our_own() -> None:
    async with isolated_ws(tls=True) as ws:
        assert ws.url.startswith("wss://127.0.0.1:")
        await ws.send_message({"type": "hello", "id": 7})
        assert await ws.receive_message() == {"type": "ack", "id": 7}
        async with websockets.connect(ws.url, ssl=ws.ssl_context) as own:
            await own.send(json.dumps({"type": "again", "id": 8}))
            assert json.loads(await own.recv()) == {"type": "ack", "id": 8}
        with pytest.raises(ssl.SSLCertVerificationError):
            async with websockets.connect(ws.url, ssl=ssl.create_default_context()):
                pass
