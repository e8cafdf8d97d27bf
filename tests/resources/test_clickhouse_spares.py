"""The looks behind isolated_clickhouse's spares: shared by whoever asks at once, never mixing
answers, and a burst of concurrent releases that finds no spares still hands out clean databases."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
import clickhouse_connect
import pytest

from isolated_env import Environment
from isolated_env._config import resolve
from isolated_env._servers import clickhouse as servers
from isolated_env.resources._clickhouse_leases import Looks, _literal, comment
from isolated_env.resources.clickhouse import isolated_clickhouse, settle


@pytest.fixture
async def admin() -> AsyncIterator[tuple[Any, Any]]:
    server = await servers.ensure_server(resolve())
    client = await clickhouse_connect.get_async_client(**server.client_kwargs(), autogenerate_session_id=False)
    try:
        yield client, server
    finally:
        await client.close()


async def test_concurrent_looks_each_get_their_own_answer(admin: tuple[Any, Any]) -> None:
    client, server = admin
    label = _literal(await comment(client, server))  # this process's owner label, as a slot's databases have
    names = [f"ie_looks_{os.getpid()}_{i}" for i in range(12)]
    for name in names:
        await client.command(f"CREATE DATABASE {name} COMMENT {label}", use_database=False)
    try:
        for name in names[::3]:  # every third one is used: a table in it
            await client.command(f"CREATE TABLE {name}.t (a UInt8) ENGINE = Memory")
        looks = Looks()
        answers: dict[int, set[str]] = {}

        async def ask(i: int) -> None:
            answers[i] = await looks.untouched(client, names[i:i + 2])

        async with anyio.create_task_group() as tg:
            for i in range(0, len(names), 2):
                tg.start_soon(ask, i)
        for i, found in answers.items():
            assert found == {name for name in names[i:i + 2] if names.index(name) % 3}, (i, found)
        assert len(answers) == len(names) // 2
    finally:
        for name in names:
            await client.command(f"DROP DATABASE IF EXISTS {name} SYNC", use_database=False)


async def test_a_burst_of_releases_hands_out_only_empty_databases() -> None:
    # Twenty tests at once, again and again, each making a table in its database: whatever a
    # release finds (a spare, none, a look in flight), the next test's database is empty.
    async def one(round_: int) -> None:
        async with Environment(capacity=20) as env:
            ch = await env.enter(isolated_clickhouse())
            assert await ch.command("SELECT count() FROM system.tables WHERE database = currentDatabase()") == 0
            if round_ % 2:
                await ch.command("CREATE TABLE t (a UInt8) ENGINE = Memory")

    for round_ in range(4):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one, round_)
    await settle()
