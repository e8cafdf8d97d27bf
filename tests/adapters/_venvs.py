"""Clean virtual environments for real pytest runs of a user's project (tests/adapters/test_matrix.py).

Each is built once from PyPI (pip's own cache makes a rebuild cheap) and kept under
``$ISOLATED_ENV_RUNNERS_CACHE`` (default ``/tmp/isolated-env-runners``), keyed by what it installs,
this checkout and its pyproject.toml. The package is installed from the checkout, editable, and
with its declared dependencies, so pip checks a cell's pins against them (a floor pyproject.toml
claims but the code does not honour fails here). A lock per venv lets xdist workers share them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = ["setuptools>=68", "wheel"]


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("ISOLATED_ENV_RUNNERS_CACHE", "/tmp/isolated-env-runners"))


def venv(name: str, requirements: list[str], extras: str = "redis") -> pathlib.Path:
    """The python of a venv holding ``requirements`` and this package (with ``extras``)."""
    pyproject = (ROOT / "pyproject.toml").read_bytes()
    key = hashlib.sha256(b"\n".join([sys.version.encode(), str(ROOT).encode(), pyproject,
                                     extras.encode(), *(r.encode() for r in requirements)])).hexdigest()[:12]
    home = cache_dir() / f"matrix-{name}-{key}"
    python = home / "bin" / "python"
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / f".matrix-{name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another xdist worker may be building it
        if (home / ".ready").exists():
            return python
        started = time.perf_counter()
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(home)], check=True, capture_output=True)
            pip = [str(python), "-m", "pip", "install", "-q"]
            subprocess.run([*pip, *BUILD, *requirements], check=True, capture_output=True, text=True, timeout=900)
            subprocess.run([*pip, "--no-build-isolation", "-e", f"{ROOT}[{extras}]", *requirements],
                           check=True, capture_output=True, text=True, timeout=900)
        except subprocess.CalledProcessError as exc:
            pytest.fail(f"could not build the {name} venv: {exc}\n{exc.stdout}\n{exc.stderr}", pytrace=False)
        except subprocess.TimeoutExpired as exc:
            pytest.skip(f"building the {name} venv from PyPI took too long: {exc}")
        (home / ".ready").write_text(f"built in {time.perf_counter() - started:.1f} s\n")
    return python
