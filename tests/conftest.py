from __future__ import annotations

import os

import pytest

# Endpoint variables of the developer's shell must not leak into tests that set their own.
_ENDPOINT_VARS = [name for name in os.environ if name.startswith("TEST_") and name.split("_")[1] in
                  {"POSTGRES", "REDIS", "CLICKHOUSE"}]


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A monkeypatch with every TEST_* endpoint and ISOLATED_ENV_* setting removed."""
    for name in list(os.environ):
        if name.startswith(("TEST_POSTGRES", "TEST_REDIS", "TEST_CLICKHOUSE", "ISOLATED_ENV_")):
            monkeypatch.delenv(name)
    monkeypatch.delenv("CI", raising=False)
    return monkeypatch
