"""isolated_env.sync: the resources from synchronous code, on the background loop, against real services."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import threading
import types
from pathlib import Path

import pytest

import isolated_env as ie
from isolated_env import sync
from isolated_env.resources.postgres import settle

psycopg = pytest.importorskip("psycopg")
redis = pytest.importorskip("redis")

SCHEMA = ie.PostgresTemplate(name="sync_users", sql="CREATE TABLE users (id int PRIMARY KEY, name text)")


def _databases_named(dsn: str, name: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone()
        assert row is not None
        return int(row[0])


def test_postgres_is_a_private_database_any_connection_reaches() -> None:
    with sync.isolated_postgres(template=SCHEMA) as db:
        with db.connect() as writer:
            writer.execute("INSERT INTO users VALUES (1, 'ada')")
            writer.commit()
        with psycopg.connect(db.dsn) as reader:  # the user's own connection, by DSN
            assert reader.execute("SELECT name FROM users").fetchall() == [("ada",)]
        name, dsn = db.database, db.dsn
    sync.call(settle)  # drops run in the background of the loop
    with sync.isolated_postgres() as other:
        assert other.database != name
        assert _databases_named(other.dsn, name) == 0
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn).close()


def test_postgres_clones_the_template_fresh_each_time() -> None:
    for _ in range(2):
        with sync.isolated_postgres(template=SCHEMA) as db, db.connect(autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)
            conn.execute("INSERT INTO users VALUES (1, 'x')")


def test_connections_left_open_are_closed_on_exit() -> None:
    with sync.isolated_postgres() as db:
        conn = db.connect()
    assert conn.closed


def test_transaction_mode_is_refused_with_the_reason() -> None:
    with pytest.raises(ie.ConfigError, match=r"database mode only.*cannot be shared with another thread"):
        sync.isolated_postgres(mode="transaction")


def test_sqlalchemy_url_names_the_driver() -> None:
    with sync.isolated_postgres() as db:
        assert db.url().startswith("postgresql+psycopg://")
        assert db.url("asyncpg").startswith("postgresql+asyncpg://")


def test_reprs_hide_passwords() -> None:
    fake = types.SimpleNamespace(dsn="postgresql://app:s3cret@db.example:5432/x", database="x", template="t")
    shown = repr(sync.Postgres(fake))
    assert "s3cret" not in shown and "app:***@db.example" in shown
    handle = types.SimpleNamespace(url="redis://:s3cret@127.0.0.1:1/3", db=3)
    r = sync.Redis(handle)
    try:
        assert "s3cret" not in repr(r)
    finally:
        r.client.close()


def test_redis_client_and_url_reach_one_private_database() -> None:
    with sync.isolated_redis() as r:
        assert r.dbsize() == 0
        r.set("k", "v")
        with redis.Redis.from_url(r.url) as other:
            assert other.get("k") == b"v"
        url = r.url
    with redis.Redis.from_url(url) as after:
        assert after.dbsize() == 0  # flushed on exit


def test_two_threads_get_two_databases() -> None:
    seen: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work() -> None:
        try:
            with sync.isolated_redis() as r:
                barrier.wait(timeout=30)
                seen.append(r.db)
                r.set("mine", r.db)
                barrier.wait(timeout=30)
                assert r.get("mine") == str(r.db).encode()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(set(seen)) == 2


def test_http_answers_by_expectation_and_reports_unmatched_requests() -> None:
    with sync.isolated_http() as http:
        http.expect("GET", "/users/1").respond_json({"id": 1})
        assert http.client.get("/users/1").json() == {"id": 1}
        assert [r.target for r in http.requests] == ["/users/1"]
    with pytest.raises(ie.ResourceCheckFailed, match="GET /nope matched no expectation"):
        with sync.isolated_http() as http:
            assert http.client.get("/nope").status_code == 500


def test_fs_reads_writes_and_is_removed() -> None:
    with sync.isolated_fs() as fs:
        fs.write_text("a/b.txt", "hello")
        assert fs.read_text("a/b.txt") == "hello"
        assert os.fspath(fs) == str(fs.path)
        with pytest.raises(ie.UnsafePath):
            fs.resolve("../outside")
        path = fs.path
    assert not path.exists()


def test_clickhouse_sync_client() -> None:
    pytest.importorskip("clickhouse_connect")
    if importlib.util.find_spec("chdb") is None:  # importing chdb would load its engine here
        pytest.skip("chdb is not installed")
    with sync.isolated_clickhouse() as ch:
        ch.command("CREATE TABLE t (x UInt8) ENGINE = Memory")
        ch.insert("t", [[1], [2]], column_names=["x"])
        assert ch.query("SELECT sum(x) FROM t").result_rows == [(3,)]
        assert ch.database in ch.url


def test_environment_files_sync_handles_by_kind_and_tears_down() -> None:
    with sync.Environment() as env:
        db = env.enter(sync.isolated_postgres(template=SCHEMA))
        r = env.enter(sync.isolated_redis())
        fs = env.enter(sync.isolated_fs())
        assert env["database"] is db and env["postgres"] is db and env["redis"] is r and "fs" in env
        r.set("k", "v")
        env.reset()
        assert r.dbsize() == 0
        path = fs.path
    assert not path.exists()


def test_environment_failure_is_released_as_failed_and_the_error_goes_on() -> None:
    env = sync.Environment()
    with pytest.raises(ZeroDivisionError), env:
        env.enter(sync.isolated_fs(keep_on_failure=True))
        1 / 0  # noqa: B018
    assert env.outcome is ie.Outcome.FAILED
    assert [k.kind for k in env.kept] == ["fs"]
    kept = env.kept[0].where
    assert os.path.isdir(kept)
    shutil.rmtree(kept)


def test_environment_refuses_async_resources() -> None:
    with sync.Environment() as env, pytest.raises(ie.ConfigError, match=r"sync\.isolated_"):
        env.enter(ie.isolated_redis())  # type: ignore[arg-type]


def test_unavailable_service_raises_service_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_REDIS_URL", "redis://127.0.0.1:1/0")
    with pytest.raises(ie.ServiceUnavailable), sync.isolated_redis():
        pass


async def test_sync_code_called_from_an_async_test() -> None:
    # An async test calling a synchronous app: the sync resources live on their own loop.
    with sync.isolated_redis() as r:
        r.set("k", "v")
        assert r.get("k") == b"v"


def test_close_then_use_starts_a_new_loop() -> None:
    first = sync.portal()
    sync.close()
    with sync.isolated_fs() as fs:
        assert fs.path.is_dir()
    assert sync.portal() is not first


# -- the sync pytest fixtures, as a user's plain `def test_…` meets them ------------------------

FIXTURE_SUITE = """
import psycopg
import pytest
import redis

import isolated_env as ie

@pytest.fixture
def isolated_database_template():
    return ie.PostgresTemplate(name="fixture_users", sql="CREATE TABLE users (id int PRIMARY KEY)")

@pytest.mark.parametrize("n", range(3))
def test_database_dsn(isolated_database_dsn, n):
    with psycopg.connect(isolated_database_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)
        conn.execute("INSERT INTO users VALUES (1)")  # committed on leaving the block

@pytest.mark.parametrize("n", range(3))
def test_redis_url(isolated_redis_url, n):
    with redis.Redis.from_url(isolated_redis_url) as r:
        assert r.dbsize() == 0
        r.set("k", n)
"""


_LEFT_OPEN = re.compile(r"ResourceWarning|Exception ignored|Task was destroyed|was never awaited|Unclosed")
# A kept database pins the embedded server, which outlives the child run that started it (its
# Popen warns at exit); tolerated there, as in tests/adapters/test_pytest_plugin.py.
_SERVER_OUTLIVES_ITS_STARTER = re.compile(r"subprocess\.py:\d+: ResourceWarning: subprocess \d+ is still running$")


def _run(pytester: pytest.Pytester, *args: str, allow: re.Pattern[str] | None = None, **env: str) -> pytest.RunResult:
    """A child pytest run as a user's project would have it, strict about warnings and about what
    it leaves open."""
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    child = {k: v for k, v in os.environ.items()
             if not k.startswith(("TEST_POSTGRES", "TEST_REDIS", "TEST_CLICKHOUSE", "ISOLATED_ENV_", "PYTEST_"))
             or k == "ISOLATED_ENV_STATE_DIR"}
    child.pop("CI", None)
    child.update(PYTHONWARNINGS="always::ResourceWarning", **env)
    with pytest.MonkeyPatch.context() as mp:
        for name in set(os.environ) - set(child):
            mp.delenv(name)
        for name, value in child.items():
            mp.setenv(name, value)
        # Without two plugins installed here that no user suite of these needs (2.5 s of CPU a child).
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:langsmith_plugin",
                                               "-p", "no:hypothesispytest", *args, timeout=300)
    output = result.stdout.lines + result.stderr.lines
    left_open = [line for line in output if _LEFT_OPEN.search(line) and not (allow and allow.search(line))]
    assert not left_open, "\n".join(output)
    return result


def test_sync_fixtures_give_private_databases_to_plain_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(FIXTURE_SUITE)
    result = _run(pytester)
    result.assert_outcomes(passed=6)
    result.stdout.no_fnmatch_line("*resources left behind*")


UNAVAILABLE_SUITE = """
def test_redis_url(isolated_redis_url):
    pass
"""


def test_sync_fixture_skips_when_the_service_is_unavailable(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(UNAVAILABLE_SUITE)
    result = _run(pytester, "-rs", TEST_REDIS_URL="redis://127.0.0.1:1/0")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*Redis is unavailable*"])


def test_sync_fixture_fails_when_services_are_required(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(UNAVAILABLE_SUITE)
    result = _run(pytester, "--isolated-env-require", TEST_REDIS_URL="redis://127.0.0.1:1/0")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*required: CI=true or --isolated-env-require*"])


KEEP_SUITE = """
def test_fails(isolated_database_dsn):
    assert False
"""


def test_sync_database_of_a_failed_test_is_kept_when_asked(pytester: pytest.Pytester, private_state_dir: Path) -> None:
    pytester.makepyfile(KEEP_SUITE)
    result = _run(pytester, "--isolated-env-keep-failed", allow=_SERVER_OUTLIVES_ITS_STARTER,
                  ISOLATED_ENV_STATE_DIR=str(private_state_dir))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*isolated_env kept the data of failed tests*", "*test_fails: postgres: database ie_*"]
    )
    line = next(x for x in result.stdout.lines if "test_fails: postgres: database" in x)
    dsn = re.search(r"postgresql://\S+", line)
    assert dsn is not None
    # the summary shows no password, but where to read it (the embedded server's 0600 file)
    pwfile = re.search(r"password: `cat (\S+)`", line)
    assert pwfile is not None
    password = Path(pwfile.group(1)).read_text().strip()
    with psycopg.connect(dsn.group().replace(":***@", f":{password}@")) as conn:  # still there, to look at
        assert conn.execute("SELECT 1").fetchone() == (1,)
