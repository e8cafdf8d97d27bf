"""Corpus: pytest-mock, monkeypatch and the mock-providing plugin fixtures."""

import datetime
import os
import sys
import time

import httpx
import psycopg
import pytest
from pytest import MonkeyPatch


def test_mocker(mocker):
    mocker.patch("app.db.psycopg.connect")  # expect: mocker.patch postgres
    mocker.patch.object(httpx.AsyncClient, "get")  # expect: mocker.patch.object http
    mocker.patch.dict(os.environ, {"OPENAI_API_KEY": "sk-test"})  # expect: mocker.patch.dict llm
    mocker.patch.multiple("app.files", read=mocker.DEFAULT)  # expect: mocker.patch.multiple filesystem
    client = mocker.MagicMock(spec=psycopg.Connection)  # expect: mocker.MagicMock postgres
    mocker.AsyncMock()  # expect: mocker.AsyncMock internal
    spy = mocker.spy(time, "sleep")  # expect: mocker.spy clock
    assert client and spy.call_count == 0


def test_monkeypatch(monkeypatch):
    monkeypatch.setattr("app.cache.redis.Redis.from_url", lambda url: None)  # expect: monkeypatch.setattr redis
    monkeypatch.setattr(time, "time", lambda: 0.0)  # expect: monkeypatch.setattr clock
    monkeypatch.setattr(httpx, "get", lambda *a: None)  # expect: monkeypatch.setattr http
    monkeypatch.setenv("CLICKHOUSE_URL", "http://x")  # expect: monkeypatch.setenv clickhouse
    monkeypatch.setenv("FEATURE_FLAG", "1")  # expect: monkeypatch.setenv internal
    monkeypatch.delenv("POSTGRES_PASSWORD", raising=False)  # expect: monkeypatch.delenv postgres
    monkeypatch.setitem(os.environ, "REDIS_HOST", "localhost")  # expect: monkeypatch.setitem redis
    monkeypatch.setitem(sys.modules, "websockets", None)  # expect: monkeypatch.setitem websocket
    monkeypatch.setitem(app_settings, "llm_model", "gpt-4")  # expect: monkeypatch.setitem llm
    monkeypatch.delattr(datetime, "datetime")  # expect: monkeypatch.delattr clock
    assert time.time() == 0.0


def test_monkeypatch_context(monkeypatch):
    with monkeypatch.context() as mp:
        mp.setattr("app.storage.shutil.rmtree", lambda p: None)  # expect: monkeypatch.setattr filesystem
    assert True


def test_monkeypatch_object():
    patcher = MonkeyPatch()
    patcher.setenv("ANTHROPIC_API_KEY", "x")  # expect: monkeypatch.setenv llm
    patcher.undo()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(os.path, "exists", lambda p: True)  # expect: monkeypatch.setattr filesystem
    assert True


def test_plugin_fixtures(httpserver, respx_mock, freezer, time_machine):  # expect: httpserver http; respx http; freezegun clock; time-machine clock
    httpserver.expect_request("/x").respond_with_json({})
    assert httpx.get(httpserver.url_for("/x")).json() == {}


async def test_report_fixtures(mock_database, mock_redis, mock_websocket, mock_llm):  # expect: mock-fixture postgres; mock-fixture redis; mock-fixture websocket; mock-fixture llm
    await mock_database.fetchval("select 1")
    mock_redis.get.assert_called_once_with("k")


@pytest.fixture
def mock_http_client(mocker):
    return mocker.MagicMock()  # expect: mocker.MagicMock http


def test_uses_mock_http_client(mock_http_client, tmp_path):  # expect: mock-fixture http
    assert mock_http_client is not None


app_settings: dict[str, str] = {}
