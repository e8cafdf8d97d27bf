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
