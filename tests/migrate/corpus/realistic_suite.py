"""Corpus: a suite as teams write it (names from services of the kind the original report migrates),
labelled before the classifier was run on it."""

import json
from datetime import datetime, timezone
from unittest import mock
from unittest.mock import AsyncMock, MagicMock, patch

import pytest


@pytest.fixture
def mock_db_session():
    session = AsyncMock()  # expect: AsyncMock postgres
    session.execute.return_value.scalar.return_value = 1
    return session


@pytest.fixture
def fake_cache():
    return MagicMock()  # expect: MagicMock redis


@patch("services.auth.jwt_service.datetime")  # expect: patch clock
@patch("services.auth.user_repository.get_by_email")  # expect: patch postgres
async def test_login(get_by_email, dt, mock_db_session, fake_cache):  # expect: mock-fixture postgres; mock-fixture redis
    dt.now.return_value = datetime(2024, 1, 1, tzinfo=timezone.utc)
    get_by_email.return_value = {"id": 1}
    get_by_email.assert_awaited_once()


@patch("services.agents.llm_manager.ChatOpenAI")  # expect: patch llm
@patch("services.agents.websocket_manager.broadcast")  # expect: patch websocket
async def test_agent_run(broadcast, chat):
    broadcast.assert_awaited()


async def test_clickhouse_metrics(mocker):
    client = mocker.patch("services.metrics.clickhouse_client.insert")  # expect: mocker.patch clickhouse
    mocker.patch("services.metrics.redis_client.incr")  # expect: mocker.patch redis
    mocker.patch("services.metrics.requests.post", return_value=MagicMock(status_code=200))  # expect: mocker.patch http
    assert client.call_count == 0


def test_upload(monkeypatch, tmp_path):
    monkeypatch.setattr("services.files.storage.UPLOAD_DIR", str(tmp_path))  # expect: monkeypatch.setattr filesystem
    monkeypatch.setenv("S3_BUCKET", "test")  # expect: monkeypatch.setenv internal
    with mock.patch("services.files.os.remove") as remove:  # expect: patch filesystem
        remove.assert_not_called()
    assert json.loads("{}") == {}


def test_thread_events():
    manager = MagicMock()  # expect: MagicMock internal
    with patch("services.threads.thread_service.ThreadService.create") as create:  # expect: patch internal
        create.return_value = {"id": "t1"}
    with patch("services.threads.postgres_client.fetch_one", new_callable=AsyncMock):  # expect: patch postgres
        pass
    with patch("services.threads.anthropic.AsyncAnthropic"):  # expect: patch llm
        pass
    assert manager is not None


class TestRateLimiter:
    @patch("services.gateway.rate_limiter.time.time", return_value=0)  # expect: patch clock
    @patch("services.gateway.rate_limiter.redis.Redis.from_url")  # expect: patch redis
    def test_blocks(self, from_url, now):
        from_url.return_value.incr.return_value = 101
        assert from_url.return_value.incr.return_value > 100

    def test_http_client(self):
        with patch("services.gateway.httpx.AsyncClient") as client:  # expect: patch http
            client.return_value.__aenter__.return_value.get = AsyncMock()  # expect: AsyncMock http
        assert True
