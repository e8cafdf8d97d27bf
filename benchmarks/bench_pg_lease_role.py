"""What a private database's own login role costs: one database-mode clone's life (create and
label, the session the warm pool opens for it, drop) with the role (``CONNECT`` revoked from
``PUBLIC``, granted to a role of its own) and without it (everyone's test role), interleaved on
one embedded server.

    python benchmarks/bench_pg_lease_role.py [--batches 8] [--clones 40]

All of it runs in the warm pool's background tasks, not in a test: a lease still pops a ready
clone and takes over its parked session. Prints a table and writes
benchmarks/results/pg_lease_role.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg
from _interleave import interleaved

from isolated_env._config import resolve
from isolated_env._servers import postgres as pg_servers
from isolated_env.resources.postgres.labels import CLONE_PREFIX, create_database, drop_database
from isolated_env.resources.postgres.roles import lease_server, lease_sql, rails
from isolated_env.resources.postgres.sql import quote_ident

RESULTS = Path(__file__).resolve().parent / "results" / "pg_lease_role.json"
PHASES = ("create", "connect", "drop", "total")


async def main(batches: int, clones: int) -> dict[str, Any]:
    server = await pg_servers.ensure_server(resolve())
    guard = await rails(server)
    admin = await asyncpg.connect(**server.connect_kwargs())
    names = (f"{CLONE_PREFIX}bench_{n}" for n in itertools.count())

    async def one(variant: str) -> dict[str, float]:
        name = next(names)
        own = lease_server(guard.tests, name) if variant == "with" else None
        login = own or guard.tests
        t0 = time.perf_counter()
        await create_database(admin, server, name, guard.base, grant=guard.role,
                              then=lease_sql(name, own) if own else "", mode="database")
        t1 = time.perf_counter()
        conn = await asyncpg.connect(**login.connect_kwargs(name))
        await conn.close()
        t2 = time.perf_counter()
        if own:
            await drop_database(admin, name)  # the database, then its role
        else:
            await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        t3 = time.perf_counter()
        return {"create": t1 - t0, "connect": t2 - t1, "drop": t3 - t2, "total": t3 - t0}

    async def batch(variant: str) -> dict[str, float]:
        runs = [await one(variant) for _ in range(clones)]
        return {phase: statistics.median(r[phase] for r in runs) * 1000 for phase in PHASES}

    try:
        found = await interleaved(("without", "with"), batches, batch)
    finally:
        await admin.close()
    medians = {v: {p: round(m, 3) for p, m in phases.items()} for v, phases in found.items()}
    return {
        "machine": platform.platform(), "postgres": server.version, "batches": batches, "clones_per_batch": clones,
        "per_clone_ms": medians,
        "added_ms": {p: round(medians["with"][p] - medians["without"][p], 3) for p in PHASES},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--clones", type=int, default=40)
    args = parser.parse_args()
    report = anyio.run(main, args.batches, args.clones)
    print(f"per clone, ms (PostgreSQL {report['postgres']}; median of {args.batches} batches of {args.clones})")
    print(f"  {'':<22}" + "".join(f"{p:>10}" for p in PHASES))
    for variant, row in report["per_clone_ms"].items():
        print(f"  {variant + ' its own role':<22}" + "".join(f"{row[p]:>10.3f}" for p in PHASES))
    print(f"  {'added':<22}" + "".join(f"{report['added_ms'][p]:>+10.3f}" for p in PHASES))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS}")
