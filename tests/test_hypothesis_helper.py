"""isolated_env.hypothesis: every example of a property test starts from pristine resources."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

import isolated_env as ie
from isolated_env.hypothesis import pristine_examples

steps = st.lists(
    st.one_of(
        st.tuples(st.just("row"), st.integers(-1000, 1000)),
        st.tuples(st.just("key"), st.text(min_size=1, max_size=20)),
        st.tuples(st.just("savepoint"), st.integers(0, 10)),
    ),
    max_size=10,
)


@pristine_examples(max_examples=200, deadline=None)  # no timing in this one: the deadline has its own test
@given(steps=steps)
async def test_every_example_starts_clean(
    isolated_env: ie.Environment, isolated_database: Any, isolated_redis: Any, steps: list[tuple[str, Any]]
) -> None:
    assert await isolated_database.fetchval("SELECT to_regclass('prop_rows')") is None
    assert await isolated_redis.dbsize() == 0
    await isolated_database.execute("CREATE TABLE prop_rows (v int)")
    await isolated_redis.set("always", "x")
    for kind, value in steps:
        if kind == "row":
            await isolated_database.execute("INSERT INTO prop_rows VALUES ($1)", value)
        elif kind == "key":
            await isolated_redis.set(value, "x")
        else:
            async with isolated_database.transaction():
                await isolated_database.execute("INSERT INTO prop_rows SELECT generate_series(1, $1)", value)


@pristine_examples(max_examples=15, deadline=None)
@given(emails=st.lists(st.emails(), max_size=3, unique=True))
async def test_database_mode_entered_in_the_first_example_is_clean_in_every_later_one(
    isolated_env: ie.Environment, emails: list[str]
) -> None:
    if "postgres" not in isolated_env:  # entered lazily: the first example is exempt from the deadline
        schema = ie.PostgresTemplate(name="hyp_helper", sql="CREATE TABLE users (email text PRIMARY KEY)")
        await isolated_env.enter(ie.isolated_postgres(mode="database", template=schema))
    import asyncpg

    other = await asyncpg.connect(isolated_env["postgres"].dsn)  # committed work, seen by any connection
    try:
        assert await other.fetchval("SELECT count(*) FROM users") == 0
        await other.executemany("INSERT INTO users VALUES ($1)", [(e,) for e in emails])
    finally:
        await other.close()


USER_TESTS = """
import itertools
import time

from hypothesis import given, settings, HealthCheck, strategies as st

import isolated_env as ie
from isolated_env.hypothesis import pristine_examples


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers())
async def test_without_the_helper_an_example_sees_the_last_one_s_keys(isolated_redis, n):
    assert await isolated_redis.dbsize() == 0
    await isolated_redis.set("k", n)


@pristine_examples(max_examples=20)
@given(n=st.integers())
async def test_with_it_none_does(isolated_env, isolated_redis, n):
    assert await isolated_redis.dbsize() == 0
    await isolated_redis.set("k", n)


first = itertools.count()

@pristine_examples(max_examples=5, deadline=50)
@given(n=st.integers())
async def test_the_first_example_is_exempt(isolated_env, n):
    if next(first) == 0:
        time.sleep(0.2)


entering = itertools.count()

@pristine_examples(max_examples=5, deadline=50)
@given(n=st.integers())
async def test_an_example_entering_a_resource_is_exempt(isolated_env, n):
    if next(entering) == 2:
        await isolated_env.enter(ie.isolated_fs())
        time.sleep(0.2)


@pristine_examples(max_examples=5, deadline=50)
@given(n=st.integers())
async def test_a_slow_warm_example_exceeds_the_deadline(isolated_env, n):
    time.sleep(0.2)


@pristine_examples(max_examples=5)
@given(n=st.integers())
async def test_needs_an_environment(isolated_redis, n):
    pass
"""


def test_in_a_user_s_suite(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nanyio_mode = auto\n")
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", timeout=300)
    result.stdout.fnmatch_lines_random([
        "PASSED test_user.py::test_with_it_none_does*",
        "PASSED test_user.py::test_the_first_example_is_exempt*",
        "PASSED test_user.py::test_an_example_entering_a_resource_is_exempt*",
        "FAILED test_user.py::test_without_the_helper_an_example_sees_the_last_one_s_keys*",
        "FAILED test_user.py::test_a_slow_warm_example_exceeds_the_deadline*",
        "FAILED test_user.py::test_needs_an_environment*",
        "E * assert 1 == 0",  # the helper-less test: the previous example's key was still there
        "E * hypothesis.errors.DeadlineExceeded: Test took *ms, which exceeds the deadline of 50.00ms*",
        "E *.ConfigError: 'test_needs_an_environment' has no Environment among its arguments*",
    ])
    result.assert_outcomes(passed=3, failed=3)


def test_it_goes_above_given() -> None:
    with pytest.raises(ie.ConfigError, match="must sit above @given"):

        @given(n=st.integers())
        @pristine_examples()
        async def test(isolated_env: ie.Environment, n: int) -> None: ...


def test_a_sync_test_is_refused() -> None:
    with pytest.raises(ie.ConfigError, match="must be `async def`"):

        @pristine_examples()
        @given(n=st.integers())
        def test(isolated_env: ie.Environment, n: int) -> None: ...


def test_a_deadline_is_a_duration() -> None:
    with pytest.raises(ie.ConfigError, match="deadline=-1"):
        pristine_examples(deadline=-1)


def test_without_hypothesis_it_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hypothesis", None)  # what `import hypothesis` meets when it is absent
    with pytest.raises(ie.MissingDependencyError, match=r"pip install 'isolated-env\[hypothesis\]'"):
        pristine_examples()


def test_slow_generation_on_a_loaded_machine_is_not_a_failure() -> None:
    @pristine_examples(suppress_health_check=[HealthCheck.data_too_large])
    @given(n=st.integers())
    async def test(isolated_env: ie.Environment, n: int) -> None: ...

    chosen = test._hypothesis_internal_use_settings  # type: ignore[attr-defined]
    assert set(chosen.suppress_health_check) == {
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
    }
