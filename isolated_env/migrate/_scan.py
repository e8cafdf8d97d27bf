"""``migrate scan``: every mock site of a tree of tests, in parallel, with the totals a migration is
steered by."""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .._errors import MissingDependencyError
from ._catalog import REPLACEMENTS

__all__ = ["RESOLUTION", "Report", "project_root", "scan", "test_files"]

RESOLUTION = (
    "static: string targets are looked up in the source files of the scanned project (its root "
    "and src/) and of installed packages (located with importlib.util.find_spec of the top-level "
    "name only); nothing is imported or executed"
)
_SKIP_DIRS = {
    ".git",
    ".hg",
    ".venv",
    "venv",
    "node_modules",
    "__pycache__",
    "build",
    "dist",
    ".tox",
    ".nox",
    "site-packages",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
}
_PARALLEL_FROM = 64  # files; below this a worker's start costs more than it saves


def _require_libcst() -> None:
    try:
        import libcst  # noqa: F401
    except ImportError:
        raise MissingDependencyError("libcst", "migrate", "isolated-env migrate") from None


def is_test_file(path: Path) -> bool:
    return path.suffix == ".py" and (
        path.name.startswith("test_") or path.name.endswith("_test.py") or path.name == "conftest.py"
    )


def test_files(paths: Iterable[Path]) -> list[Path]:
    """The test files (``test_*.py``, ``*_test.py``, ``conftest.py``) under ``paths``; a file named
    explicitly is taken whatever its name."""
    found: set[Path] = set()
    for path in paths:
        if path.is_file():
            found.add(path)
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
                found.update(p for f in filenames if is_test_file(p := Path(dirpath, f)))
        else:
            raise FileNotFoundError(f"no such file or directory: {path}; give test files or directories to scan")
    return sorted(found)


def project_root(path: Path) -> Path:
    """The nearest directory above ``path`` that holds a pyproject.toml, pytest.ini, setup.py, setup.cfg or
    .git; else the directory of ``path``."""
    start = path.resolve() if path.is_dir() else path.resolve().parent
    for candidate in (start, *start.parents):
        if any(
            (candidate / marker).exists()
            for marker in ("pyproject.toml", "pytest.ini", "setup.py", "setup.cfg", ".git")
        ):
            return candidate
    return start


_RESOLVERS: dict[Path, Any] = {}  # per worker process: a resolver per project root


def _scan_one(args: tuple[str, str, bool]) -> Any:
    from ._resolve import Resolver
    from ._visit import FileScan, scan_source

    path, shown, resolve = args
    resolver = None
    if resolve:
        root = project_root(Path(path))
        resolver = _RESOLVERS.get(root)
        if resolver is None:
            resolver = _RESOLVERS[root] = Resolver([root, root / "src"])
    try:
        source = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return FileScan(shown, error=f"cannot read: {exc}")
    return scan_source(shown, source, resolver)


def _shown(path: Path) -> str:
    try:
        return path.resolve().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path.as_posix()


@dataclasses.dataclass
class Report:
    files: list[Any]  # FileScan
    resolved: bool = True

    @property
    def sites(self) -> list[Any]:
        return [s for f in self.files for s in f.sites]

    def mock_only_tests(self) -> list[Any]:
        return [t for f in self.files for t in f.tests if t.call_asserts and not t.state_asserts]

    def unresolved(self) -> list[Any]:
        return [u for f in self.files for u in f.unresolved]

    def counts(self) -> dict[str, Any]:
        """What the ratchet holds: every count that must not grow."""
        sites = self.sites
        return {
            "sites": len(sites),
            "by_kind": dict(sorted(collections.Counter(s.kind for s in sites).items())),
            "by_service": dict(sorted(collections.Counter(s.service for s in sites).items())),
            "by_file": dict(sorted(collections.Counter(s.path for s in sites).items())),
            "mock_only_tests": len(self.mock_only_tests()),
            "unresolved_targets": len(self.unresolved()),
        }

    def totals(self) -> dict[str, Any]:
        sites = self.sites
        counts = self.counts()
        by_test = collections.Counter(f"{s.path}::{s.test}" for s in sites if s.test is not None)
        return {
            **counts,
            "files": len(self.files),
            "files_with_sites": len(counts["by_file"]),
            "tests": sum(len(f.tests) for f in self.files),
            "tests_with_sites": sum(1 for f in self.files for t in f.tests if t.sites),
            "by_test": dict(sorted(by_test.items())),
            "mock_only_tests": [
                {"path": t.path, "line": t.line, "test": t.name, "call_asserts": t.call_asserts}
                for t in self.mock_only_tests()
            ],
            "unresolved_targets": [dataclasses.asdict(u) for u in self.unresolved()],
            "replacements": {s: REPLACEMENTS[s] for s in counts["by_service"]},
            "resolution": RESOLUTION if self.resolved else "off",
            "errors": [{"path": f.path, "error": f.error} for f in self.files if f.error],
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "sites": [
                {"path": s.path, "line": s.line, "kind": s.kind, "service": s.service, "test": s.test}
                for s in self.sites
            ],
            "totals": self.totals(),
        }


def scan(paths: Sequence[str | Path], *, jobs: int | None = None, resolve: bool = True) -> Report:
    """Scan the test files under ``paths``: ``jobs`` worker processes (default: one per core, and
    none for a small tree); ``resolve=False`` skips the lookup of string targets."""
    _require_libcst()
    files = test_files(Path(p) for p in paths)
    work = [(str(f), _shown(f), resolve) for f in files]
    jobs = jobs or os.cpu_count() or 1
    if jobs == 1 or len(work) < _PARALLEL_FROM:
        results = [_scan_one(w) for w in work]
    else:
        # spawn: the caller may have threads (a fork would copy their locks held)
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            results = list(pool.imap(_scan_one, work, chunksize=max(1, min(64, len(work) // (jobs * 8)))))
    return Report(results, resolve)
