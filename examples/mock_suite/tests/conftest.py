from unittest.mock import AsyncMock

import fakeredis
import pytest


@pytest.fixture
def cache_client():
    client = fakeredis.FakeRedis()
    yield client
    client.close()


@pytest.fixture
async def mock_redis():
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


@pytest.fixture
def mock_database():
    db = AsyncMock()
    db.fetchval.return_value = 2
    return db
