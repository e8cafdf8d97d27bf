"""Canary: what isolated_env relies on in anyio's pytest plugin still holds."""

from __future__ import annotations

import asyncio

from isolated_env._drivers import _seams, anyio_runner


def test_installed_anyio_is_in_the_tested_range() -> None:
    assert _seams.tested("anyio", anyio_runner.TESTED), (
        f"anyio {_seams.installed_version('anyio')} is outside {anyio_runner.TESTED}: re-check "
        "anyio.pytest_plugin.get_runner and widen the range"
    )


def test_a_held_runner_is_the_one_later_tests_get() -> None:
    from anyio.pytest_plugin import get_runner

    # The plugin may hold a lease of its own already (an earlier test of this process used a fixture
    # on anyio's runner): then the runner outlives our lease, and that is not what is checked here.
    with get_runner("asyncio", {}) as before:
        pass
    held = anyio_runner.hold_runner("asyncio")
    assert held is not None
    key, stack = held
    assert key[0] == "asyncio"
    try:
        with get_runner("asyncio", {}) as first:
            seen = []

            async def loop() -> None:
                seen.append(asyncio.get_running_loop())

            first.run_test(loop, {})
        others_hold_it = first is before
        with get_runner("asyncio", {}) as second:
            assert second is first, "anyio made a new runner while ours was leased"
            second.run_test(loop, {})
        assert seen[0] is seen[1], "the event loop changed between two tests under a held runner"
    finally:
        stack.close()
    with get_runner("asyncio", {}) as fresh:
        assert (fresh is first) == others_hold_it, "closing our lease did not let the runner go"
