"""The summary's breakdown of setup time and its recommendation, each cause provoked for real in a
child pytest run on servers of its own (tests/adapters/test_pytest_plugin.py runs the plugin the
same way)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = """
import isolated_env as ie

# Two hundred tables: a clone copies every one of their files, slower than trivial tests go.
WIDE = ie.PostgresTemplate(name="wide", sql="\\n".join(
    f"CREATE TABLE t{i} (id serial PRIMARY KEY, body text);" for i in range(200)))
"""

PREBUILD = """
import anyio
import isolated_env as ie
from conftest import WIDE

async def main():
    async with ie.isolated_postgres(mode="database", template=WIDE) as db:
        await db.fetchval("SELECT 1")

anyio.run(main)
"""


@pytest.fixture(autouse=True)
def _servers_of_its_own(private_state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOLATED_ENV_STATE_DIR", str(private_state_dir))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TEST_POSTGRES", "TEST_REDIS", "TEST_CLICKHOUSE", "ISOLATED_ENV_", "PYTEST_"))
           or k == "ISOLATED_ENV_STATE_DIR"}
    env.update(CI="true", PYTEST_ADDOPTS="-p no:langsmith_plugin", **extra)
    return env


def _warm(*kinds: str) -> None:
    """Servers started ahead of the run and kept warm (the private state dir's teardown stops them)."""
    up = subprocess.run([sys.executable, "-m", "isolated_env.cli", "up", *kinds], capture_output=True, text=True,
                        env=_env(), timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr


def run(pytester: pytest.Pytester, *args: str, **env: str) -> pytest.RunResult:
    pytester.makeini("[pytest]\nanyio_mode = auto\n")
    pytester.makeconftest(CONFTEST)
    child = _env(**env)
    with pytest.MonkeyPatch.context() as mp:
        for name in set(os.environ) - set(child):
            mp.delenv(name)
        for name, value in child.items():
            mp.setenv(name, value)
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=300)


def advice_of(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stdout.lines
            if line.startswith(("isolated_env: setup took", "  recommended:"))]


def test_a_cold_start_recommends_keeping_servers_warm_merged_over_workers(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.parametrize("n", range(4))
        async def test_rolled_back(isolated_database, n):
            assert await isolated_database.fetchval("SELECT 1") == 1
    """)
    # Started in the tests' setup, as without the start ahead of the first test: that start overlaps
    # collection, and the summary counts only what a test waited for.
    result = run(pytester, "-n", "2", ISOLATED_ENV_PRESTART="0")
    result.assert_outcomes(passed=4)
    went, advised = advice_of(result)
    assert went.startswith("isolated_env: setup took ") and ": server starts " in went  # the largest part
    assert "keep the servers warm with `isolated-env up`" in advised
    assert int(advised.split(": ", 2)[2].split()[0]) >= 2  # both workers started or joined the server


def test_concurrent_tests_at_capacity_one_recommend_more_capacity(pytester: pytest.Pytester) -> None:
    _warm("redis")
    pytester.makepyfile("""
        import anyio
        import isolated_env as ie

        async def hold():
            async with ie.isolated_redis() as r:
                await r.set("k", "v")
                await anyio.sleep(0.3)

        async def test_four_at_once():
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(hold)
    """)
    result = run(pytester, ISOLATED_ENV_CAPACITY="1")
    result.assert_outcomes(passed=1)
    went, advised = advice_of(result)
    assert ": capacity waits " in went
    assert "raise the capacity (ISOLATED_ENV_CAPACITY)" in advised and "3 leases waited" in advised


def test_database_mode_waiting_for_clones_recommends_transaction_mode(pytester: pytest.Pytester) -> None:
    _warm("postgres")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(prebuild=PREBUILD)
    subprocess.run([sys.executable, "prebuild.py"], cwd=pytester.path, env=_env(), check=True, timeout=300)
    # 20 at once, with room for all (no capacity waits): more than the pool keeps ready, so most
    # wait for a clone of the wide template to be made.
    pytester.makepyfile("""
        import anyio
        import isolated_env as ie
        from conftest import WIDE

        async def test_private_databases_at_once():
            async def one():
                async with ie.isolated_postgres(mode="database", template=WIDE) as db:
                    assert await db.fetchval("SELECT count(*) FROM t0") == 0

            async with ie.Environment(capacity=20):
                async with anyio.create_task_group() as tg:
                    for _ in range(20):
                        tg.start_soon(one)
    """)
    result = run(pytester, ISOLATED_ENV_CAPACITY="20")
    result.assert_outcomes(passed=1)
    went, advised = advice_of(result)
    assert ": clone waits " in went and "template builds" not in went  # built before the run
    assert "use transaction mode" in advised
    waited = re.search(r"(\d+) database-mode leases waited for clones", advised)
    assert waited is not None and int(waited.group(1)) >= 10, advised


def test_templates_built_every_run_recommend_pinning(pytester: pytest.Pytester) -> None:
    _warm("postgres")
    pytester.makepyfile("""
        import uuid
        import pytest
        import isolated_env as ie

        RUN = uuid.uuid4().hex  # in the template's content: a new template every run

        # A migration slower than the clone of what it builds (as real ones are), so the builds
        # lead the breakdown however fast this machine clones.
        @pytest.mark.parametrize("n", range(3))
        async def test_fresh_template(n):
            template = ie.PostgresTemplate(name=f"t{n}", sql=(
                f"CREATE TABLE t (id int); COMMENT ON TABLE t IS '{RUN}'; SELECT pg_sleep(0.2)"))
            async with ie.isolated_postgres(mode="database", template=template) as db:
                assert await db.fetchval("SELECT count(*) FROM t") == 0
    """)
    result = run(pytester)
    result.assert_outcomes(passed=3)
    went, advised = advice_of(result)
    assert ": template builds " in went
    assert "pin the template's version" in advised and "3 template builds" in advised
