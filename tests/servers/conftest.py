from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A private state directory on tmpfs, world-searchable: the embedded PostgreSQL runs as an
    unprivileged user when the tests run as root."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    path = Path(tempfile.mkdtemp(prefix="ie-srv-", dir=base))
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)
