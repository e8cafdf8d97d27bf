"""Property: whatever a test does, Environment.reset() returns every resource to pristine state."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import isolated_env as ie

ops = st.lists(
    st.one_of(
        st.tuples(st.just("row"), st.integers(-1000, 1000)),
        st.tuples(st.just("key"), st.text(min_size=1, max_size=20)),
        st.tuples(st.just("file"), st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8})?", fullmatch=True)),
        st.tuples(st.just("savepoint"), st.integers(0, 10)),
    ),
    max_size=15,
)

_env: dict[str, Any] = {}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=ops)
async def test_reset_always_restores_pristine_state(isolated_env: ie.Environment, steps: list[tuple[str, Any]]) -> None:
    if "postgres" not in isolated_env:
        db = await isolated_env.enter(ie.isolated_postgres())
        await isolated_env.enter(ie.isolated_redis())
        await isolated_env.enter(ie.isolated_fs())
    db, r, fs = isolated_env["postgres"], isolated_env["redis"], isolated_env["fs"]
    await isolated_env.reset()
    # pristine at the start of every example, whatever the previous one did
    assert await db.fetchval("SELECT to_regclass('prop_rows')") is None
    assert await r.dbsize() == 0
    assert fs.listdir() == []
    await db.execute("CREATE TABLE prop_rows (v int)")
    for kind, value in steps:
        if kind == "row":
            await db.execute("INSERT INTO prop_rows VALUES ($1)", value)
        elif kind == "key":
            await r.set(value, "x")
        elif kind == "file":
            await fs.write_text(value + ".txt", "x")
        else:
            async with db.transaction():
                await db.execute("INSERT INTO prop_rows SELECT generate_series(1, $1)", value)
