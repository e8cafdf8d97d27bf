from unittest.mock import AsyncMock, patch

from shop import report


@patch("shop.report.asyncpg.connect", new_callable=AsyncMock)
async def test_counts_users(connect):
    connect.return_value.fetchval.return_value = 2
    assert await report.count_users("postgresql://app@db/app") == 2
    connect.assert_awaited_once()
