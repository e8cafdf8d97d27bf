"""Type checkers see the drivers' methods on the handles: ``mypy --strict`` accepts a user's test
file written against them and rejects its typos."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = ROOT / "tests" / "typing"


def _expected(path: Path) -> set[tuple[int, str]]:
    """The ``(line, error code)`` pairs marked ``# E: <code>`` in ``path``."""
    found = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = re.search(r"# E: ([a-z-]+)$", line)
        if match:
            found.add((number, match.group(1)))
    return found


def test_mypy_strict_accepts_a_users_test_file_and_rejects_its_typos(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    good, typos = FILES / "user_test_file.py", FILES / "user_test_typos.py"
    # From the repository root, as `make typecheck` runs: its pyproject.toml configures mypy.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         "--no-error-summary", "--show-error-codes", str(good.relative_to(ROOT)), str(typos.relative_to(ROOT))],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    errors = [line for line in result.stdout.splitlines() if ": error: " in line]
    assert not [line for line in errors if not line.startswith(str(typos.relative_to(ROOT)))], result.stdout
    rejected = set()
    for line in errors:
        match = re.match(r"[^:]+:(\d+): error: .*\[([a-z-]+)\]$", line)
        assert match is not None, line
        rejected.add((int(match.group(1)), match.group(2)))
    assert rejected == _expected(typos), result.stdout
    assert result.returncode == 1


def test_the_typed_postgres_methods_are_asyncpgs() -> None:
    """Canary: the methods type checkers see on a PostgreSQL handle are those of the installed
    asyncpg's ``Connection`` (asyncpg ships no types, so they are spelled out by hand)."""
    asyncpg = pytest.importorskip("asyncpg")
    source = (ROOT / "isolated_env" / "resources" / "postgres" / "_connection_api.py").read_text()
    body = source.split("class ConnectionMethods:", 1)[1]
    typed = set(re.findall(r"^        (?:async )?def ([a-z]\w*)\(", body, flags=re.M))
    public = {name for name, member in inspect.getmembers(asyncpg.Connection)
              if not name.startswith("_") and callable(member)}
    assert typed == public
