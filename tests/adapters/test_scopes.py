"""environment_fixture() under pytest: class data set up once and seen by every test of the class,
no test seeing another's writes, the same tests on two configurations (params), the class's
resources released when the class ends, and a failing or cancelled test leaving the class intact."""

from __future__ import annotations

import collections
import textwrap
from typing import Any

import pytest

import isolated_env as ie

SCHEMA = ie.PostgresTemplate(sql="CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE)")
SEEDED: collections.Counter[str] = collections.Counter()


async def seed_users(env: ie.Environment) -> None:
    db = env["database"]
    await db.executemany("INSERT INTO users VALUES ($1, $2)", [(i, f"user{i}@example.com") for i in range(200)])
    await env["redis"].hset("user:1", mapping={"email": "user1@example.com"})
    await env["fs"].write_text("avatars/1.png", "png")
    SEEDED[db.mode] += 1


users_environment = ie.environment_fixture(
    scope="class", setup=seed_users,
    database=ie.isolated_postgres(template=SCHEMA), redis=ie.isolated_redis(), fs=ie.isolated_fs(),
    params={"transaction": {}, "database": {"database": ie.isolated_postgres(mode="database", template=SCHEMA)}},
)


class TestClassData:
    @pytest.mark.parametrize("n", range(4))
    async def test_sees_the_class_data_and_no_other_tests_writes(self, users_environment: Any, n: int) -> None:
        db, r, fs = users_environment["database"], users_environment["redis"], users_environment["fs"]
        assert SEEDED[db.mode] == 1  # set up once for the class, whichever test came first
        assert await db.fetchval("SELECT count(*) FROM users") == 200
        assert await db.fetchval("SELECT email FROM users WHERE id = 1") == "user1@example.com"
        assert await r.hget("user:1", "email") == b"user1@example.com"
        assert fs.exists("avatars/1.png")
        # what any earlier test of the class wrote is gone
        assert await db.fetchval("SELECT count(*) FROM users WHERE id >= 1000") == 0
        assert await r.exists("written") == 0 and not fs.exists("written.txt")
        await db.execute("INSERT INTO users VALUES ($1, $2)", 1000 + n, f"new{n}@example.com")
        await db.execute("DELETE FROM users WHERE id = 1")
        await r.set("written", n)
        await r.delete("user:1")
        await fs.write_text("written.txt", str(n))
        (fs.path / "avatars" / "1.png").unlink()


async def test_the_ready_service_environments(auth_environment: Any, backend_environment: Any) -> None:
    assert await auth_environment["database"].fetchval("SELECT 1") == 1
    assert await auth_environment["redis"].ping()
    assert sorted(backend_environment.keys()) == ["fs", "http", "postgres", "redis"]
    assert backend_environment["database"] is not auth_environment["database"]


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ie.ConfigError, match="scope is one of"):
        ie.environment_fixture(scope="classy", database="postgres")
    with pytest.raises(ie.ConfigError, match="name at least one resource"):
        ie.environment_fixture()
    with pytest.raises(ie.ConfigError, match="give an isolated_"):
        ie.environment_fixture(database=42)


PROJECT = '''
import anyio
import pytest
import isolated_env as ie

SCHEMA = ie.PostgresTemplate(sql="CREATE TABLE t (x int)")

async def seed(env):
    await env["database"].execute("INSERT INTO t SELECT generate_series(1, 10)")
    await env["redis"].set("seed", 1)

shared = ie.environment_fixture(scope="class", setup=seed, database=ie.isolated_postgres(template=SCHEMA),
                                redis=ie.isolated_redis())
per_module = ie.environment_fixture(scope="module", fs=ie.isolated_fs, setup=lambda env: env["fs"].write_text(
    "m.txt", "module"))

async def check(env):
    assert await env["database"].fetchval("SELECT count(*) FROM t") == 10
    assert await env["redis"].get("seed") == b"1" and await env["redis"].dbsize() == 1

class TestFailureAndCancellation:
    async def test_1_fails_after_writing(self, shared):
        await check(shared)
        await shared["database"].execute("DELETE FROM t")
        await shared["redis"].set("x", 1)
        assert False, "failing on purpose"

    async def test_2_is_cancelled_mid_query(self, shared):
        await check(shared)
        with anyio.move_on_after(0.2):
            await shared["database"].execute("DELETE FROM t")
            await shared["database"].execute("SELECT pg_sleep(30)")

    async def test_3_sees_the_class_intact(self, shared):
        await check(shared)

class TestSyncTests:
    def test_a_sync_test_gets_it_too(self, shared, per_module):
        assert shared["redis"].db != 0 and per_module["fs"].exists("m.txt")

CLASS_DATABASES = []

async def remember(env):
    CLASS_DATABASES.append(env["database"].database)

in_database_mode = ie.environment_fixture(scope="class", setup=remember,
                                          database=ie.isolated_postgres(mode="database", template=SCHEMA))

class TestDatabaseMode:
    async def test_a_clone_of_the_class_database(self, in_database_mode):
        assert in_database_mode["database"].database != CLASS_DATABASES[0]

async def test_z_the_class_database_went_with_its_class():  # runs after the class: one process, file order
    from isolated_env.resources.postgres import settle

    await settle()
    async with ie.isolated_postgres() as db:
        left = await db.fetchval("SELECT count(*) FROM pg_database WHERE datname = ANY($1::text[])", CLASS_DATABASES)
    assert CLASS_DATABASES and left == 0
'''


def test_failure_and_cancellation_in_a_test_leave_the_class_intact(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nanyio_mode = auto\nfilterwarnings = error\n")
    pytester.makeconftest("import pytest\n\n@pytest.fixture\ndef anyio_backend():\n    return 'asyncio'\n")
    pytester.makepyfile(test_project=textwrap.dedent(PROJECT))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=300)
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(["*failing on purpose*"])

