"""The service's tests, on real PostgreSQL, Redis and files: no mocks, each test isolated."""

from __future__ import annotations

import csv

import pytest

import isolated_env as ie
from inventory.service import SCHEMA, InventoryService, OutOfStock, UnknownProduct

# The schema is loaded once into a template database (rebuilt only when SCHEMA changes); every
# test then runs in a rolled-back transaction on a copy of it.
INVENTORY = ie.PostgresTemplate(sql=SCHEMA, name="inventory")


@pytest.fixture
async def isolated_database(isolated_env):  # type: ignore[no-untyped-def]
    return await isolated_env.enter(ie.isolated_postgres(template=INVENTORY))


@pytest.fixture
async def service(isolated_database, isolated_redis, isolated_fs):  # type: ignore[no-untyped-def]
    svc = InventoryService(isolated_database, isolated_redis, isolated_fs.path / "exports")
    await svc.add_product("apple", "Apple", 10)
    return svc


async def test_stock_is_read_through_the_cache(service, isolated_redis) -> None:  # type: ignore[no-untyped-def]
    assert await service.stock("apple") == 10
    assert await isolated_redis.get("stock:apple") == b"10"
    assert 0 < await isolated_redis.ttl("stock:apple") <= 300


async def test_reserve_updates_stock_and_invalidates_the_cache(service, isolated_redis) -> None:  # type: ignore[no-untyped-def]
    await service.stock("apple")
    assert await service.reserve("apple", 3) == 7
    assert await isolated_redis.exists("stock:apple") == 0
    assert await service.stock("apple") == 7


async def test_out_of_stock_rolls_back_only_the_reservation(service, isolated_database) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OutOfStock):
        await service.reserve("apple", 11)
    assert await isolated_database.fetchval("SELECT count(*) FROM reservations") == 0
    assert await service.stock("apple") == 10


async def test_unknown_product(service) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnknownProduct):
        await service.stock("pear")
    with pytest.raises(UnknownProduct):
        await service.reserve("pear", 1)


async def test_export_writes_a_real_file(service, isolated_fs) -> None:  # type: ignore[no-untyped-def]
    await service.add_product("banana", "Banana", 4)
    path = await service.export_csv()
    assert path.parent == isolated_fs.path / "exports"
    with path.open() as f:
        assert list(csv.DictReader(f)) == [
            {"sku": "apple", "name": "Apple", "quantity": "10"},
            {"sku": "banana", "name": "Banana", "quantity": "4"},
        ]


@pytest.mark.parametrize("run", range(20))
async def test_every_test_starts_from_nothing(service, isolated_database, isolated_redis, run: int) -> None:  # type: ignore[no-untyped-def]
    # 'apple' is inserted by every test's fixture: a leak from an earlier test would be a
    # unique violation; the cache and reservations would show it too.
    assert await isolated_database.fetchval("SELECT count(*) FROM products") == 1
    assert await isolated_redis.dbsize() == 0
    await service.reserve("apple", 1 + run % 5)
