"""Corpus: unittest.mock in every spelling. Labelled as tests/migrate/_labels.py reads it; scanned,
never imported."""

import os
import unittest.mock as um
from unittest import mock
from unittest.mock import AsyncMock, MagicMock, Mock, NonCallableMagicMock, PropertyMock, create_autospec, patch
from unittest.mock import patch as p

import asyncpg
import mock as backport
import redis
import requests
from openai import AsyncOpenAI


@patch("app.db.asyncpg.connect")  # expect: patch postgres
@p("app.cache.redis.Redis.get")  # expect: patch redis
@mock.patch.object(requests, "get")  # expect: patch.object http
def test_decorators(m_get, m_redis, m_connect):
    assert m_connect.called


@um.patch("app.clients.httpx.AsyncClient.post")  # expect: patch http
@backport.patch("app.storage.open", create=True)  # expect: patch filesystem
@um.patch("app.jobs.time.sleep")  # expect: patch clock
def test_aliased_modules(sleep, fake_open, post):
    post.assert_called_once()


def test_with_forms():
    with patch("app.analytics.clickhouse_connect.get_client"):  # expect: patch clickhouse
        pass
    with patch(target="app.ws.websockets.connect"):  # expect: patch websocket
        pass
    with patch.object(redis.Redis, "set") as set_:  # expect: patch.object redis
        set_.return_value = True
    with p.object(asyncpg, "create_pool", new=AsyncMock()):  # expect: patch.object postgres
        pass
    with mock.patch.dict(os.environ, {"DATABASE_URL": "sqlite://"}):  # expect: patch.dict postgres
        pass
    with patch.dict("os.environ", REDIS_URL="redis://x"):  # expect: patch.dict redis
        pass
    with patch.dict("sys.modules", {"openai": MagicMock()}):  # expect: patch.dict llm
        pass
    with patch.multiple("app.llm.client", complete=mock.DEFAULT, stream=mock.DEFAULT):  # expect: patch.multiple llm
        pass
    assert os.environ.get("X") is None


def test_started_patchers():
    patcher = patch("app.billing.stripe_api.charge")  # expect: patch http
    charge = patcher.start()
    patcher.stop()
    assert charge.call_count == 0


def test_constructors():
    db = MagicMock(spec=asyncpg.Connection)  # expect: MagicMock postgres
    cache = Mock(spec_set=redis.Redis)  # expect: Mock redis
    llm = AsyncMock(spec=AsyncOpenAI)  # expect: AsyncMock llm
    session = create_autospec(requests.Session)  # expect: create_autospec http
    mock_redis_client = MagicMock()  # expect: MagicMock redis
    repository = NonCallableMagicMock()  # expect: NonCallableMagicMock postgres
    price = PropertyMock(return_value=3)  # expect: PropertyMock internal
    helper = Mock()  # expect: Mock internal
    assert db and cache and llm and session and mock_redis_client and repository and price and helper


class Service:
    def __init__(self, db, cache):
        self.db, self.cache = db, cache


def test_keyword_names():
    service = Service(db=MagicMock(), cache=MagicMock())  # expect: MagicMock postgres; MagicMock redis
    service.db.execute.assert_not_called()


def test_not_sites():
    response = requests.get("https://example.invalid")
    value = os.environ.get("HOME")
    patched = dict(patch="not a mock")
    assert response and value and patched
