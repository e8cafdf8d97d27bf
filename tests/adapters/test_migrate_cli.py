"""`isolated-env migrate` on examples/mock_suite, as a user runs it: scan, rewrite, and the suite then
passes on real embedded Redis and PostgreSQL; a second rewrite changes nothing; the ratchet holds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mock_suite"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=1200)


def test_rewrite_turns_the_mock_suite_into_a_passing_real_service_suite(tmp_path: Path) -> None:
    project = tmp_path / "mock_suite"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    app_before = {p.name: p.read_text() for p in (project / "shop").glob("*.py")}

    scanned = run("-m", "isolated_env.cli", "migrate", "scan", "tests", "--format", "json", cwd=project)
    assert scanned.returncode == 0, scanned.stderr
    totals = json.loads(scanned.stdout)["totals"]
    assert totals["by_kind"] == {"AsyncMock": 1, "fakeredis": 3, "mock-fixture": 2, "patch": 1, "sqlite-memory": 1}
    assert totals["by_service"] == {"postgres": 4, "redis": 4}
    assert (
        run(
            "-m", "isolated_env.cli", "migrate", "ratchet", "tests", "--baseline", "mocks.json", "--update", cwd=project
        ).returncode
        == 0
    )

    rewritten = run("-m", "isolated_env.cli", "migrate", "rewrite", "tests", cwd=project)
    assert rewritten.returncode == 0, rewritten.stdout + rewritten.stderr
    out = rewritten.stdout
    assert "rewritten, and the rewritten tests pass: 6" in out, out
    assert "reverted" not in out
    assert (
        "suggested, to review and apply by hand: 1" in out and "+async def test_counts_users(isolated_database)" in out
    )

    tests = {p.name: p.read_text() for p in (project / "tests").glob("*.py")}
    assert not any("fakeredis" in text or "sqlite://" in text for text in tests.values())
    assert "def test_a_session_belongs_to_its_user(isolated_redis):" in tests["test_sessions.py"]
    assert "def test_arithmetic_in_the_database(isolated_database):" in tests["test_sessions.py"]
    assert {p.name: p.read_text() for p in (project / "shop").glob("*.py")} == app_before  # not a test file

    suite = run("-m", "pytest", "-p", "no:cacheprovider", "-q", cwd=project)
    assert suite.returncode == 0, suite.stdout[-3000:] + suite.stderr[-3000:]
    assert "8 passed" in suite.stdout
    summary = suite.stdout[suite.stdout.index("isolated_env: 7 tests used 7 resources") :]  # real ones, not fakes
    assert [line.split()[:3] for line in summary.splitlines()[1:3]] == [["postgres", "3", "set"], ["redis", "4", "set"]]

    again = run("-m", "isolated_env.cli", "migrate", "rewrite", "tests", "--check", cwd=project)
    assert again.returncode == 0 and "would rewrite" not in again.stdout, again.stdout

    held = run("-m", "isolated_env.cli", "migrate", "ratchet", "tests", "--baseline", "mocks.json", cwd=project)
    assert held.returncode == 0 and "shrank: by_kind[fakeredis]: 3 -> 0" in held.stdout, held.stdout
    (project / "tests" / "test_new.py").write_text("import fakeredis\n\ndef test_new():\n    fakeredis.FakeRedis()\n")
    grew = run("-m", "isolated_env.cli", "migrate", "ratchet", "tests", "--baseline", "mocks.json", cwd=project)
    assert grew.returncode == 1, grew.stdout
    assert "grew: by_file[tests/test_new.py]: 0 -> 1" in grew.stdout and "the ratchet holds" in grew.stderr
