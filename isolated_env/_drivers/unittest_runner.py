"""The one private seam of CPython's unittest we use: IsolatedAsyncioTestCase's runner hooks.

``IsolatedAsyncioTestCase`` makes an ``asyncio.Runner`` per test in ``_setupAsyncioRunner`` and
closes it in ``_tearDownAsyncioRunner`` (Python 3.11 to 3.13). Overriding the two lets every test
share one loop, so pooled connections are reused. They are private, so they are touched here only,
on the Python versions they were tested on; elsewhere unittest keeps its loop per test.
"""

from __future__ import annotations

import sys
import unittest

__all__ = ["TESTED", "shares_loops"]

TESTED = ((3, 11), (3, 14))  # [from, to)


def shares_loops() -> bool:
    """Whether this Python's IsolatedAsyncioTestCase has the runner hooks we override."""
    low, high = TESTED
    return (
        low <= sys.version_info[:2] < high
        and callable(getattr(unittest.IsolatedAsyncioTestCase, "_setupAsyncioRunner", None))
        and callable(getattr(unittest.IsolatedAsyncioTestCase, "_tearDownAsyncioRunner", None))
    )
