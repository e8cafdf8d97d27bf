"""The isolated_env_load fixture: N environments at once under a profile, each isolated from the
others, with the run's figures reported."""

from __future__ import annotations

from typing import Any

import pytest

import isolated_env as ie

SCHEMA = ie.PostgresTemplate(sql="CREATE TABLE hits (worker text)")


async def test_concurrent_environments_under_a_profile_are_isolated_and_reported(isolated_env_load: Any) -> None:
    async def scenario(env: ie.Environment) -> None:
        me = f"{id(env)}"
        await env["database"].execute("INSERT INTO hits VALUES ($1)", me)
        await env["redis"].set("me", me)
        await env["fs"].write_text("me.txt", me)
        # each environment sees its own writes only, although all run at once
        assert await env["database"].fetchval("SELECT array_agg(worker) FROM hits") == [me]
        assert await env["redis"].get("me") == me.encode() and await env["redis"].dbsize() == 1
        assert env["fs"].listdir() == ["me.txt"]

    report = await isolated_env_load.run(
        scenario, n=20, profile="ci-thorough", database=ie.isolated_postgres(template=SCHEMA), redis="redis",
        fs=ie.isolated_fs,
    )
    assert report.errors == (), report.errors
    assert (report.n, report.profile, report.capacity) == (20, "ci-thorough", 20)
    assert 0 < report.setup_p50_ms <= report.setup_p95_ms
    assert 0.0 <= report.hit_ratio <= 1.0 and report.rss_mb > 10
    assert {p.capacity for p in report.pools} == {20} and sum(p.leases for p in report.pools) >= 40
    assert "20 environments under ci-thorough" in str(report) and "p95" in str(report)
    assert isolated_env_load.reports == [report]


async def test_a_failing_scenario_is_counted_and_the_others_run_on(isolated_env_load: Any) -> None:
    started: list[int] = []
    done: list[int] = []

    async def scenario(env: ie.Environment) -> None:
        started.append(len(started))
        if started[-1] == 2:
            done.append(-1)
            raise RuntimeError("one worker fails")
        done.append(await env["redis"].dbsize())

    report = await isolated_env_load.run(scenario, n=5, profile="dev", redis=ie.isolated_redis)
    assert len(report.errors) == 1 and "one worker fails" in str(report.errors[0])
    assert sorted(done) == [-1, 0, 0, 0, 0]


async def test_bad_arguments_are_clear_errors(isolated_env_load: Any) -> None:
    async def scenario(env: ie.Environment) -> None:
        pass

    with pytest.raises(ie.ConfigError, match="at least 1"):
        await isolated_env_load.run(scenario, n=0)
    with pytest.raises(ie.ConfigError, match="profile"):
        await isolated_env_load.run(scenario, n=1, profile="turbo")
