from __future__ import annotations

import subprocess
import sys

import isolated_env

HEAVY = {"httpx", "websockets", "h11", "aiofiles", "tenacity", "asyncpg", "redis", "clickhouse_connect", "chdb"}


def test_all_lists_every_public_name() -> None:
    public = {name for name in dir(isolated_env) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(isolated_env, name)).__name__ == "module"}
    assert set(isolated_env.__all__) == public - modules - {"annotations"}


def test_public_names_are_importable_and_documented() -> None:
    for name in isolated_env.__all__:
        obj = getattr(isolated_env, name)
        if callable(obj) and not isinstance(obj, type(isolated_env.UNSET)):
            assert obj.__doc__, f"{name} has no docstring"


def test_error_tree() -> None:
    for name in isolated_env.__all__:
        obj = getattr(isolated_env, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, isolated_env.IsolatedEnvError)
    assert issubclass(isolated_env.LeaseTimeout, TimeoutError)
    assert issubclass(isolated_env.ConfigError, ValueError)


def test_importing_the_package_and_the_plugin_pulls_in_no_driver() -> None:
    code = (
        "import isolated_env, isolated_env.pytest_plugin, sys; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(HEAVY)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_names_resolve_lazily_to_their_modules() -> None:
    assert isolated_env.isolated_redis.__module__ == "isolated_env.resources.redis"
    assert isolated_env.Outcome.FAILED.value == "failed"


def test_the_plugin_imports_no_event_loop_or_metrics_until_a_resource_is_used() -> None:
    # A project that never uses the fixtures still loads the plugin in every pytest run: it must
    # not pay for asyncio, anyio, psutil or our runtime (loaded with the first fixture or resource).
    code = (
        "import pytest, sys; before = set(sys.modules); import isolated_env.pytest_plugin; "
        "import isolated_env._pytest_presets, isolated_env._pytest_load; "
        "print(sorted({m for m in set(sys.modules) - before if m.split('.')[0] in "
        "('asyncio', 'anyio', 'psutil') or m in ('isolated_env._metrics', 'isolated_env._runtime', "
        "'isolated_env._environment', 'isolated_env._pool')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
