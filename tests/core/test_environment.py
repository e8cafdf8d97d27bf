from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

import isolated_env as ie
from isolated_env._resource import resource


@resource("thing")
async def thing(
    log: list[str], name: str, fail_on_exit: bool = False, hang: bool = False
) -> AsyncIterator[dict[str, str]]:
    log.append(f"enter {name}")
    try:
        yield {"name": name}
    finally:
        if hang:
            await anyio.sleep(10)
        log.append(f"exit {name}")
        if fail_on_exit:
            raise RuntimeError(f"{name} broke")


class Resettable:
    def __init__(self) -> None:
        self.resets = 0

    async def reset(self) -> None:
        self.resets += 1


@resource("counter", reset=lambda handle: handle.reset())
async def counter() -> AsyncIterator[Resettable]:
    yield Resettable()


async def test_enter_files_handles_by_kind_and_tears_down_in_reverse() -> None:
    log: list[str] = []
    async with ie.Environment() as env:
        a = await env.enter(thing(log, "a"))
        b = await env.enter(thing(log, "b"), name="other")
        assert env["thing"] is a and env["other"] is b
        assert "thing" in env and env.keys() == ["thing", "other"]
    assert log == ["enter a", "enter b", "exit b", "exit a"]


async def test_aliases_and_missing_names() -> None:
    async with ie.Environment() as env:
        handle = await env.enter(thing([], "db"), name="postgres")
        assert env["database"] is handle
        with pytest.raises(KeyError, match="'redis' is not in this environment"):
            env["redis"]


async def test_second_of_a_kind_needs_a_name() -> None:
    async with ie.Environment() as env:
        await env.enter(thing([], "a"))
        with pytest.raises(ie.ConfigError, match="name="):
            await env.enter(thing([], "b"))


async def test_teardown_failures_surface_together_and_everything_is_torn_down() -> None:
    log: list[str] = []
    with pytest.raises(ExceptionGroup) as info:
        async with ie.Environment() as env:
            await env.enter(thing(log, "a", fail_on_exit=True))
            await env.enter(thing(log, "b"), name="b")
            await env.enter(thing(log, "c", fail_on_exit=True), name="c")
    assert log == ["enter a", "enter b", "enter c", "exit c", "exit b", "exit a"]
    messages = sorted(str(e.__cause__) for e in info.value.exceptions)
    assert messages == ["a broke", "c broke"]
    assert all(isinstance(e, ie.TeardownError) for e in info.value.exceptions)


async def test_single_teardown_failure_is_raised_as_itself() -> None:
    with pytest.raises(ie.TeardownError, match="cleanup of 'thing' failed"):
        async with ie.Environment() as env:
            await env.enter(thing([], "a", fail_on_exit=True))


async def test_teardown_is_bounded_by_the_timeout() -> None:
    log: list[str] = []
    with pytest.raises(ie.TeardownError, match=r"did not finish within 0\.05 s"):
        async with ie.Environment(teardown_timeout=0.05) as env:
            await env.enter(thing(log, "slow", hang=True))
    assert log == ["enter slow"]


async def test_cancelled_test_still_tears_down() -> None:
    log: list[str] = []
    with anyio.move_on_after(0.01):
        async with ie.Environment() as env:
            await env.enter(thing(log, "a"))
            await anyio.sleep(5)
    assert log == ["enter a", "exit a"]


async def test_reset_resets_every_resettable_handle() -> None:
    async with ie.Environment() as env:
        c1 = await env.enter(counter())
        c2 = await env.enter(counter(), name="c2")
        await env.enter(thing([], "plain"))
        await env.reset()
        await env.reset()
        assert (c1.resets, c2.resets) == (2, 2)


async def test_statistics_report_setup_and_leaks() -> None:
    async with ie.Environment() as env:
        await env.enter(thing([], "a"))
        stats = env.statistics()
        assert set(stats.setup_ms) == {"thing"} and stats.total_setup_ms >= 0
        assert stats.leaks is None
    stats = env.statistics()
    assert stats.leaks is not None and stats.leaks.children == frozenset()


async def test_enter_outside_the_context_is_an_error() -> None:
    env = ie.Environment()
    with pytest.raises(ie.IsolatedEnvError, match="async with Environment"):
        await env.enter(thing([], "a"))


async def test_profile_is_validated_on_enter(clean_environ: pytest.MonkeyPatch) -> None:
    with pytest.raises(ie.ConfigError, match="not a known profile"):
        async with ie.Environment(profile="fast"):
            pass
