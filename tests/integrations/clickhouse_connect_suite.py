"""clickhouse-connect's own integration suite, run against the chdb adaptor.

``python tests/integrations/clickhouse_connect_suite.py [--workers N]`` (or the test of the same
name) gets the suite at :data:`REVISION`, starts a private adaptor, points the suite at it through
its ``CLICKHOUSE_CONNECT_TEST_*`` variables and compares what failed with
``clickhouse_connect_expected_failures.txt``: a new failure, or an expected one that passes, fails
the run. Nothing of the suite is kept in this project; it is fetched each time:

- ``CLICKHOUSE_CONNECT_SUITE=<dir>``: a checkout of the repository, or its git directory (the
  revision is read from it with ``git archive``);
- otherwise the GitHub archive of the revision is downloaded (``codeload.github.com``).

The suite needs its own release of clickhouse-connect (:data:`CLIENT`, the release of
:data:`REVISION`: a newer client fails tests written for an older one), pandas 2,
``pytest-asyncio``, ``pytest-mock``, ``polars`` and ``pyjwt``. They must not be installed where
this project's tests run (pytest-asyncio would take over their event loops), so they go into a
venv of their own, ``.venv-ccsuite``, that sees this interpreter's other packages through a
``.pth`` file and is remade when :data:`SUITE_PACKAGES` changes;
``CLICKHOUSE_CONNECT_SUITE_PYTHON`` names another interpreter to use instead (it must import
clickhouse-connect :data:`CLIENT`).

Arguments after ``--`` pick part of the suite (``-- tests/integration_tests/test_timezones.py -k
local``); only the expected failures among the tests that ran are compared then.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CLIENT = "1.7.2"
"""The clickhouse-connect release whose suite runs, installed into the suite's venv: the suite of
one release checks that release's client (a newer client fails tests written for an older one)."""
REVISION = "928365467f6b1224116a1db3a35a16243e1632d7"
"""The commit of clickhouse-connect's ``v1.7.2`` tag, whose tests/integration_tests run (the
newest release tag of its repository this project was checked on)."""
ARCHIVE = f"https://codeload.github.com/ClickHouse/clickhouse-connect/tar.gz/{REVISION}"
EXPECTED = Path(__file__).with_name("clickhouse_connect_expected_failures.txt")
SUITE_VENV = Path(__file__).resolve().parents[2] / ".venv-ccsuite"
SUITE_PACKAGES = [
    f"clickhouse-connect=={CLIENT}",
    "pandas<3",
    "pytest-asyncio>=1.0",
    "pytest-mock>=3.12",
    "polars>=1.0",
    "pyjwt[crypto]>=2.8",
]
"""What the suite needs beyond this project's own test dependencies: its own release of the
client, and pandas 2 (its tests pass ``pd.Timestamp`` a nanosecond positionally, which pandas 3
reads as a tzinfo)."""


def suite_python() -> str:
    """The interpreter that runs the suite: ``CLICKHOUSE_CONNECT_SUITE_PYTHON``, else the suite's venv."""
    named = os.environ.get("CLICKHOUSE_CONNECT_SUITE_PYTHON")
    if named:
        return named
    python = SUITE_VENV / "bin" / "python"
    stamp = SUITE_VENV / ".installed"
    wanted = "\n".join(SUITE_PACKAGES) + "\n"
    if not stamp.exists() or stamp.read_text() != wanted:
        import site
        import venv

        venv.create(SUITE_VENV, with_pip=True, clear=True)
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        # This interpreter's packages (clickhouse-connect, pandas, pyarrow, pytest, ...) are seen, not copied.
        (Path(purelib) / "isolated-env-parent.pth").write_text("\n".join(site.getsitepackages()) + "\n")
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *SUITE_PACKAGES], check=True)
        stamp.write_text(wanted)
    return str(python)


def check_client(python: str) -> None:
    """Refuse to run when the suite's interpreter imports another clickhouse-connect than :data:`CLIENT`."""
    found = subprocess.run(
        [python, "-c", "import clickhouse_connect; print(clickhouse_connect.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if found != CLIENT:
        raise RuntimeError(
            f"{python} imports clickhouse-connect {found}; the suite at {REVISION[:8]} needs {CLIENT}: "
            f"pip install clickhouse-connect=={CLIENT} there (or delete {SUITE_VENV} to remake it)"
        )


def expected_failures(path: Path = EXPECTED) -> dict[str, str]:
    """``test id -> the engine's reason`` from the expected-failures file (``id  # reason`` lines)."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        test, sep, reason = line.partition("#")
        if not sep or not reason.strip():
            raise ValueError(f"{path.name}: every entry needs '# <engine reason>': {line!r}")
        found[test.strip()] = reason.strip()
    return found


def reason_groups(path: Path = EXPECTED) -> dict[str, list[str]]:
    """``group -> its test ids`` from the ``## <group>`` lines of the expected-failures file."""
    groups: dict[str, list[str]] = {}
    group = ""
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            group = line[3:].strip()
            groups[group] = []
        elif line.strip() and not line.startswith("#"):
            if not group:
                raise ValueError(f"{path.name}: an entry before any '## <group>' line: {line!r}")
            groups[group].append(line.partition("#")[0].strip())
    return groups


def fetch(into: Path) -> Path:
    """The suite's source tree at :data:`REVISION`, unpacked under ``into``."""
    source = os.environ.get("CLICKHOUSE_CONNECT_SUITE")
    target = into / "clickhouse-connect"
    target.mkdir()
    if source:
        src = Path(source)
        git_dir = src if (src / "objects").is_dir() else src / ".git"
        if git_dir.exists():
            archive = subprocess.run(
                ["git", "--git-dir", str(git_dir), "archive", REVISION, "tests", "pyproject.toml"],
                check=True,
                capture_output=True,
            ).stdout
            tarfile.open(fileobj=io.BytesIO(archive)).extractall(target, filter="data")
        else:
            shutil.copytree(src / "tests", target / "tests")
            shutil.copy(src / "pyproject.toml", target / "pyproject.toml")
        return target
    with urllib.request.urlopen(ARCHIVE, timeout=60) as response:
        data = response.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        top = tar.getnames()[0].split("/")[0]
        members = [m for m in tar.getmembers() if m.name.startswith((f"{top}/tests/", f"{top}/pyproject.toml"))]
        tar.extractall(into, members=members, filter="data")
    (into / top).rename(target.with_name("unpacked"))
    target.rmdir()
    return target.with_name("unpacked")


@contextmanager
def adaptor() -> Iterator[dict[str, str]]:
    """A private chdb adaptor for the run, stopped at the end: the suite's connection variables."""
    from isolated_env._config import resolve
    from isolated_env._servers import clickhouse as servers

    with tempfile.TemporaryDirectory(prefix="ie-ccsuite-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as d:
        proc, info = servers.PROVIDER.start(resolve(), Path(d))
        try:
            yield {
                "CLICKHOUSE_CONNECT_TEST_HOST": info["host"],
                "CLICKHOUSE_CONNECT_TEST_PORT": str(info["port"]),
                "CLICKHOUSE_CONNECT_TEST_USER": info["user"],
                "CLICKHOUSE_CONNECT_TEST_PASSWORD": Path(info["password_file"]).read_text().strip(),
                "CLICKHOUSE_CONNECT_TEST_DOCKER": "False",
            }
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def outcomes(junit: Path) -> dict[str, str]:
    """``test id -> passed|failed|skipped`` from a junit report (ids relative to integration_tests)."""
    found: dict[str, str] = {}
    for case in ET.parse(junit).iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        module = module.split("integration_tests/", 1)[-1]
        parts = module.split("/")
        # classname is the module's dotted path, then the class (capitalised) for a test in a class
        classes = next((i for i, p in enumerate(parts) if p[:1].isupper()), len(parts))
        path = "/".join(parts[:classes]) + ".py"
        test_id = "::".join([path, *parts[classes:], case.get("name", "")])
        kinds = {child.tag for child in case}
        found[test_id] = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
    return found


def run(
    workers: int = 2, keep: Path | None = None, select: list[str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """Run the suite; returns every outcome and the problems (new failures, expected ones passing).
    ``select``: pytest arguments that pick part of the suite (test files under
    ``tests/integration_tests``, ``-k``); only what ran is compared then."""
    with tempfile.TemporaryDirectory(prefix="ie-ccsuite-src-") as tmp:
        root = fetch(Path(tmp))
        junit = Path(tmp) / "junit.xml"
        python = suite_python()
        check_client(python)
        with adaptor() as variables:
            # Only the suite's own plugins: this project's (seen through the .pth file) must not load.
            env = {**os.environ, **variables, "PYTHONPATH": str(root), "TZ": "UTC"}
            env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
            env.pop("ISOLATED_ENV_STATE_DIR", None)
            cmd = [
                python,
                "-m",
                "pytest",
                *(select or ["tests/integration_tests"]),
                "-q",
                "-p",
                "no:cacheprovider",
                "-o",
                "addopts=",
                "-o",
                "log_cli=false",
                f"--junitxml={junit}",
                "-n",
                str(workers),
                "-p",
                "pytest_asyncio.plugin",
                "-p",
                "pytest_mock",
                "-p",
                "xdist.plugin",
            ]
            done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        if not junit.exists():
            output = done.stdout[-3000:] + done.stderr[-3000:]
            raise RuntimeError(f"the suite did not run (exit {done.returncode}):\n{output}")
        if keep is not None:
            shutil.copy(junit, keep)
        results = outcomes(junit)
    expected = expected_failures()
    if select:
        expected = {t: r for t, r in expected.items() if t in results}
    return results, compare(results, expected)


def compare(results: dict[str, str], expected: dict[str, str]) -> list[str]:
    """What makes the run fail: a failure not expected, an expected failure that passes or is gone.
    An entry whose reason starts with ``timing:`` may pass or fail (a wall-clock bound of the suite
    that a loaded machine misses)."""
    problems = [f"new failure: {t}" for t, r in sorted(results.items()) if r == "failed" and t not in expected]
    problems += [
        f"expected to fail, but passed: {t}"
        for t, reason in sorted(expected.items())
        if results.get(t) == "passed" and not reason.startswith("timing:")
    ]
    problems += [f"expected failure not run (renamed?): {t}" for t in sorted(expected) if t not in results]
    return problems


def summary(results: dict[str, str]) -> str:
    ran = [r for r in results.values() if r != "skipped"]
    passed = ran.count("passed")
    rate = 100 * passed / max(1, len(ran))
    return f"{passed} of {len(ran)} run pass ({rate:.1f}%), {len(results) - len(ran)} skipped"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--junit", type=Path, help="keep the suite's junit report here")
    parser.add_argument(
        "select", nargs="*", help="pytest arguments after --, e.g. -- tests/integration_tests/test_timezones.py -k tz"
    )
    args = parser.parse_args()
    results, problems = run(args.workers, args.junit, args.select)
    print(summary(results))
    print("\n".join(problems) or "every failure is an expected one")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    raise SystemExit(main())
