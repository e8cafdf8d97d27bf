"""A resource from outside the package: examples/custom_resource installed the way a user installs
it, then used by real pytest processes that know it only through its entry point."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import isolated_env as ie

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "custom_resource"
DOC = ROOT / "docs" / "extending.md"


def _builds_without_downloads() -> bool:
    """Whether this interpreter's setuptools can build the example with --no-build-isolation:
    setuptools builds wheels on its own from 70.1 on, and needs the wheel package before that."""
    try:
        import setuptools
    except ImportError:
        return False
    major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a copy of the example project, the directory pip installed it into). The copy keeps the
    build's by-products out of the repository; --target keeps the shared venv untouched."""
    source = tmp_path_factory.mktemp("project") / "custom_resource"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", ".mypy_cache", ".pytest_cache"))
    target = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target)]
    if _builds_without_downloads():
        command.append("--no-build-isolation")  # offline: the build uses this venv's setuptools
    done = subprocess.run([*command, str(source)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (target / "isolated_sqlite" / "py.typed").is_file()
    return source, target


def _use(monkeypatch: pytest.MonkeyPatch, target: Path, state_dir: Path) -> dict[str, str]:
    """The child's environment: the installed example first on the path, a state directory of its
    own, and none of the developer's isolated_env settings."""
    for name in list(os.environ):
        if name.startswith(("ISOLATED_ENV_", "PYTEST_")) or name == "CI":
            monkeypatch.delenv(name)
    path = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("ISOLATED_ENV_STATE_DIR", str(state_dir))
    return dict(os.environ)


def _reap(env: dict[str, str], *, kept: bool) -> list[str]:
    """The example's own ``reap``, run by a separate process as a user's clean-up script would."""
    code = (
        "import anyio, json, isolated_env as ie\n"
        "from isolated_sqlite import SqliteResource\n"
        f"print(json.dumps(anyio.run(lambda: SqliteResource.reap(ie.resolve(), kept={kept}))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    removed: list[str] = json.loads(done.stdout)
    return removed


def _kept_path(result: pytest.RunResult, test: str) -> Path:
    line = next(x for x in result.stdout.lines if f"::{test}" in x and ": sqlite: " in x)
    where = line.split(": sqlite: ", 1)[1].split(" (", 1)[0]
    return Path(where)


def _evidence(path: Path) -> list[tuple[int]]:
    connection = sqlite3.connect(path)
    try:
        rows: list[tuple[int]] = connection.execute("SELECT x FROM evidence").fetchall()
        return rows
    finally:
        connection.close()


USER_SUITE = """
import pytest
import isolated_sqlite

def test_it_is_the_installed_copy():
    assert isolated_sqlite.__file__.startswith({target!r})

async def test_fixture(isolated_sqlite):
    await isolated_sqlite.execute("CREATE TABLE t (x)")
    assert await isolated_sqlite.tables() == ["t"]

@pytest.mark.requires_sqlite
async def test_marked_and_entered(isolated_env):
    db = await isolated_env.enter(isolated_sqlite.isolated_sqlite())
    assert isolated_env["sqlite"] is db
    assert await db.tables() == []

async def test_fails_and_keeps(isolated_env):
    db = await isolated_env.enter(isolated_sqlite.isolated_sqlite(keep_on_failure=True))
    await db.execute("CREATE TABLE evidence (x)")
    await db.execute("INSERT INTO evidence VALUES (42)")
    assert False, "look at the evidence"
"""


def test_a_user_suite_gets_fixture_marker_environment_and_kept_data(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, example: tuple[Path, Path]
) -> None:
    _, target = example
    env = _use(monkeypatch, target, pytester.path / "state")
    pytester.makeini("[pytest]\nanyio_mode = auto\n")
    pytester.makepyfile(USER_SUITE.format(target=str(target)))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers", timeout=300)
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([
        "isolated_env: 3 tests used 3 resources",
        "  sqlite * set up *p50 *",
        "isolated_env kept the data of failed tests*",
        "*::test_fails_and_keeps*: sqlite: */kept/*.sqlite3 (sqlite3 */kept/*.sqlite3)",
    ])
    kept = _kept_path(result, "test_fails_and_keeps")
    assert kept.is_relative_to(pytester.path / "state")
    assert _evidence(kept) == [(42,)]
    assert str(kept) not in _reap(env, kept=False)  # kept data outlives an ordinary reap
    assert kept.exists()
    assert _reap(env, kept=True) == [str(kept)]
    assert not kept.exists()


KEEP_FAILED_SUITE = """
async def test_fails(isolated_sqlite):
    await isolated_sqlite.execute("CREATE TABLE evidence (x)")
    await isolated_sqlite.execute("INSERT INTO evidence VALUES (42)")
    assert False, "look at the evidence"
"""

_HAS_KEEP_FAILED = "keep_failed" in {field.name for field in dataclasses.fields(ie.Settings)}


@pytest.mark.xfail(
    not _HAS_KEEP_FAILED, strict=True,
    reason="--isolated-env-keep-failed reaches keeps() through Settings.keep_failed, which Settings lacks",
)
def test_keep_failed_option_keeps_a_fixture_database(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, example: tuple[Path, Path]
) -> None:
    _, target = example
    env = _use(monkeypatch, target, pytester.path / "state")
    pytester.makeini("[pytest]\nanyio_mode = auto\n")
    pytester.makepyfile(KEEP_FAILED_SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--isolated-env-keep-failed", timeout=300)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "isolated_env kept the data of failed tests*",
        "*::test_fails*: sqlite: */kept/*.sqlite3 (sqlite3 *)",
    ])
    kept = _kept_path(result, "test_fails")
    assert _evidence(kept) == [(42,)]
    assert _reap(env, kept=True) == [str(kept)]
    assert not kept.exists()


UNAVAILABLE_SUITE = """
import pytest

@pytest.mark.requires_sqlite
def test_marked():
    pass

def test_unrelated():
    pass
"""


@pytest.mark.parametrize("require", [False, True])
def test_the_marker_runs_the_probe(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, example: tuple[Path, Path], require: bool
) -> None:
    """No writable state directory: the probe says so, the marked test is skipped (failed when
    services are required) and the unmarked one runs."""
    _, target = example
    blocked = pytester.path / "a-file"
    blocked.write_text("not a directory")
    _use(monkeypatch, target, blocked / "state")
    pytester.makeini("[pytest]\nanyio_mode = auto\n")
    pytester.makepyfile(UNAVAILABLE_SUITE)
    args = ["-p", "no:cacheprovider", "-rs", *(["--isolated-env-require"] if require else [])]
    result = pytester.runpytest_subprocess(*args, timeout=300)
    if require:
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines(["*SQLite is unavailable: cannot create a database file under*required*"])
    else:
        result.assert_outcomes(passed=1, skipped=1)
        result.stdout.fnmatch_lines(["*SKIPPED*SQLite is unavailable: cannot create a database file under*"])


def test_the_example_s_own_tests_pass(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, example: tuple[Path, Path]
) -> None:
    source, target = example
    _use(monkeypatch, target, pytester.path / "state")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", str(source / "tests"), timeout=300)
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines([f"rootdir: {source}*", "configfile: pyproject.toml*"])


# A fenced block, optionally introduced by `<!-- from PATH -->` (a verbatim quote of PATH).
_BLOCK = re.compile(r"^(?:<!-- from (?P<source>\S+) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)^```$", re.S | re.M)


def _doc_blocks() -> list[tuple[str | None, str, str]]:
    return [(m["source"], m["lang"], m["code"]) for m in _BLOCK.finditer(DOC.read_text())]


def test_the_doc_quotes_the_example_as_it_is() -> None:
    quotes = [(source, code) for source, _, code in _doc_blocks() if source]
    assert len(quotes) >= 6
    for source, code in quotes:
        assert code in (ROOT / source).read_text(), f"docs/extending.md quotes {source}, which no longer says:\n{code}"


def test_the_doc_s_other_code_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, example: tuple[Path, Path]
) -> None:
    scripts = [(lang, code) for source, lang, code in _doc_blocks() if not source]
    assert [lang for lang, _ in scripts] == ["python", "python"]
    _, target = example
    env = _use(monkeypatch, target, tmp_path / "state")
    for _, code in scripts:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, code + done.stdout + done.stderr
