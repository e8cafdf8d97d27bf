"""What releasing session advisory locks adds to a transaction-mode test: the outer transaction's
BEGIN and rollback with and without ``pg_advisory_unlock_all()``, interleaved on one connection.

    python benchmarks/bench_postgres_reset.py [--batches 10] [--tests 500]

Both variants make the same two round trips per test (the unlock rides in them), so the difference
is server-side work only. Prints a table and writes benchmarks/results/postgres_reset.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg
from _interleave import interleaved

from isolated_env._config import resolve
from isolated_env._servers import postgres as pg_servers
from isolated_env.resources.postgres import transaction

RESULTS = Path(__file__).resolve().parent / "results" / "postgres_reset.json"
_BEFORE_GUARD = "SET LOCAL ie.guard = 'on'"  # what the release did before the guard rails
_BEFORE_CHECK = transaction._CHECK.removesuffix("; SELECT pg_advisory_unlock_all()")


async def main(batches: int, tests: int) -> dict[str, Any]:
    server = await pg_servers.ensure_server(resolve())
    conn = await asyncpg.connect(**server.connect_kwargs())
    variants = {"before": (_BEFORE_GUARD, _BEFORE_CHECK), "after": (transaction._GUARD, transaction._CHECK)}
    fastest: dict[str, float] = {}

    async def batch(name: str) -> dict[str, float]:
        guard, check = variants[name]
        started = time.perf_counter()
        for _ in range(tests):
            await conn.execute(f"BEGIN; {guard}")
            await conn.execute("SELECT 1")  # the test
            await conn.execute(f"{check}; ROLLBACK")
        ms = (time.perf_counter() - started) / tests * 1000
        fastest[name] = min(fastest.get(name, ms), ms)
        return {"per_test": ms}

    try:
        medians = {name: m["per_test"] for name, m in (await interleaved(variants, batches, batch)).items()}
    finally:
        await conn.close()
    return {
        "machine": platform.platform(), "postgres": server.version, "batches": batches, "tests_per_batch": tests,
        "per_test_ms": {name: {"median": round(m, 4), "min": round(fastest[name], 4)} for name, m in medians.items()},
        "added_ms": round(medians["after"] - medians["before"], 4),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--tests", type=int, default=500)
    args = parser.parse_args()
    report = anyio.run(main, args.batches, args.tests)
    print(f"per test, ms (PostgreSQL {report['postgres']}; median of {args.batches} batches of {args.tests})")
    for name, row in report["per_test_ms"].items():
        print(f"  {name:<8} median {row['median']:.4f}   min {row['min']:.4f}")
    print(f"  added    {report['added_ms']:+.4f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS}")
