"""Servers that die and runs that are killed: what survives, how fast it comes back, what is left.

    python benchmarks/bench_faults.py [--kills 10] [--wait 30]

1. For each embedded server (PostgreSQL, Redis, the ClickHouse adaptor): ``kill -9`` it while a
   test holds a lease, ``--kills`` times; count the environments that fail after a kill (beyond
   the one that was running), whether the running one got ServerDied, and the time from the kill
   to the next working environment (median, max).
2. Start all three from a child process, SIGKILL the child, and count what is left (processes
   naming the state directory, MB in it and PostgreSQL's POSIX segments in /dev/shm) right away
   and until ``--wait`` seconds have passed (``ISOLATED_ENV_REAP_AFTER`` is set to 2).

Each part runs in a fresh state directory of its own. Prints a table and writes
benchmarks/results/faults.json. Run it against another checkout with PYTHONPATH to compare.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil

from isolated_env._servers._process import naming

RESULTS = Path(__file__).resolve().parent / "results" / "faults.json"
KINDS = ["postgres", "redis"] + (["clickhouse"] if importlib.util.find_spec("chdb") else [])

LOOP = textwrap.dedent(
    """
    import json, os, signal, sys, time, anyio, psutil, isolated_env as ie
    kind, kills = sys.argv[1], int(sys.argv[2])
    factory = getattr(ie, f"isolated_{kind}")
    async def query(h):
        if kind == "postgres": await h.fetchval("SELECT 1")
        elif kind == "redis": await h.ping()
        else: await h.command("SELECT 1")
    def server_pid():
        return json.load(open(os.path.join(os.environ["ISOLATED_ENV_STATE_DIR"], kind + ".json")))["pid"]
    async def main():
        out = {"kills": kills, "server_died": 0, "other_error": 0, "failures_after": 0, "recover_s": [],
               "detect_s": [], "restart_s": []}
        async with ie.Environment() as env:
            await query(await env.enter(factory()))
        for _ in range(kills):
            try:
                async with ie.Environment() as env:
                    h = await env.enter(factory())
                    pid = server_pid()
                    os.kill(pid, signal.SIGKILL)
                    killed = time.perf_counter()
                    psutil.Process(pid).wait(10) if pid in [c.pid for c in psutil.Process().children()] else None
                    for _ in range(500):
                        await query(h)
                        await anyio.sleep(0.01)
            except BaseException as exc:
                name = "ServerDied" if "ServerDied" in repr(exc) else type(exc).__name__
                out["server_died" if name == "ServerDied" else "other_error"] += 1
            errored = time.perf_counter()
            out["detect_s"].append(errored - killed)
            for attempt in range(10):  # the next environments, until one works
                try:
                    with anyio.fail_after(5):
                        async with ie.Environment() as env:
                            await query(await env.enter(factory()))
                    break
                except Exception:
                    out["failures_after"] += 1
                    await anyio.sleep(0.3)
            out["recover_s"].append(time.perf_counter() - killed)
            out["restart_s"].append(time.perf_counter() - errored)
        print(json.dumps(out))
    anyio.run(main)
    """
)

HOLD = textwrap.dedent(
    """
    import sys, anyio, isolated_env as ie
    async def main():
        async with ie.Environment() as env:
            for kind in sys.argv[1:]:
                await env.enter(getattr(ie, f"isolated_{kind}")())
            print("ready", flush=True)
            await anyio.sleep(300)
    anyio.run(main)
    """
)


def _state_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="ie-bench-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    path.chmod(0o711)
    return path


def _env(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_POSTGRES", "TEST_REDIS", "TEST_CLICKHOUSE"))}
    return {**env, "ISOLATED_ENV_STATE_DIR": str(state_dir), "ISOLATED_ENV_REAP_AFTER": "2"}


def _cleanup(state_dir: Path) -> None:
    subprocess.run([sys.executable, "-m", "isolated_env.cli", "down"], env=_env(state_dir), capture_output=True,
                   timeout=120)
    for proc in _processes(state_dir):
        proc.kill()
    shutil.rmtree(state_dir, ignore_errors=True)


def _processes(state_dir: Path) -> list[psutil.Process]:
    return naming(str(state_dir))


def _mb(state_dir: Path) -> float:
    total = 0
    for root, dirs, files in os.walk(state_dir):
        dirs[:] = [d for d in dirs if d != "pgcache"]  # the initdb cache is kept on purpose
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total / 1e6


def _segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("PostgreSQL.*")} if Path("/dev/shm").is_dir() else set()


def kill_loop(kind: str, kills: int) -> dict[str, Any]:
    state_dir = _state_dir()
    try:
        done = subprocess.run([sys.executable, "-c", LOOP, kind, str(kills)], env=_env(state_dir),
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not done.stdout.strip():
            return {"kills": kills, "error": done.stderr.strip().splitlines()[-1:] or ["no output"]}
        out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        for name in ("recover", "detect", "restart"):
            samples = out.pop(f"{name}_s")
            out[f"{name}_median_ms"] = statistics.median(samples) * 1000 if samples else None
            out[f"{name}_max_ms"] = max(samples) * 1000 if samples else None
        return out
    finally:
        _cleanup(state_dir)


def leftovers(wait: float) -> dict[str, Any]:
    state_dir = _state_dir()
    segments_before = _segments()
    try:
        user = subprocess.Popen([sys.executable, "-c", HOLD, *KINDS], env=_env(state_dir), stdout=subprocess.PIPE,
                                text=True)
        assert user.stdout is not None
        ready = user.stdout.readline() == "ready\n"
        running = {"processes": len(_processes(state_dir)), "mb": _mb(state_dir)}
        user.kill()
        user.wait()
        user.stdout.close()
        killed = time.monotonic()
        time.sleep(0.2)
        right_after = {"processes": len(_processes(state_dir)), "mb": _mb(state_dir),
                       "pg_segments": len(_segments() - segments_before)}
        gone_after = None
        while time.monotonic() - killed < wait:
            if not _processes(state_dir):
                gone_after = time.monotonic() - killed
                break
            time.sleep(0.1)
        end = {"processes": len(_processes(state_dir)), "mb": _mb(state_dir),
               "pg_segments": len(_segments() - segments_before)}
        return {"ready": ready, "while_running": running, "right_after_kill": right_after,
                f"after_{wait:g}s": end, "processes_gone_after_s": gone_after}
    finally:
        _cleanup(state_dir)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--wait", type=float, default=30.0)
    parser.add_argument("--only", choices=["kills", "leftovers"], help="run one part only")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "benchmark": "faults",
        "kills": {k: kill_loop(k, args.kills) for k in KINDS} if args.only != "leftovers" else {},
        "sigkilled_run": leftovers(args.wait) if args.only != "kills" else None,
    }
    print(f"\n{'server':<11} {'kills':>5} {'ServerDied':>10} {'other err':>9} {'fail after':>10} "
          f"{'recover p50 ms':>14} {'max ms':>8} {'detect p50':>10} {'restart p50':>11}")
    for kind, r in report["kills"].items():
        if "error" in r:
            print(f"{kind:<11} {r['kills']:>5}  failed: {r['error']}")
            continue
        print(f"{kind:<11} {r['kills']:>5} {r['server_died']:>10} {r['other_error']:>9} {r['failures_after']:>10} "
              f"{r['recover_median_ms'] or 0:>14.0f} {r['recover_max_ms'] or 0:>8.0f} "
              f"{r['detect_median_ms'] or 0:>10.0f} {r['restart_median_ms'] or 0:>11.0f}")
    s = report["sigkilled_run"]
    if s is not None:
        print(f"\nSIGKILLed run: while running {s['while_running']}, right after the kill {s['right_after_kill']}, "
              f"after {args.wait:g} s {s[f'after_{args.wait:g}s']}; processes gone after "
              f"{s['processes_gone_after_s']} s")
    out = RESULTS.with_name(f"faults_{args.only}.json") if args.only else RESULTS
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
