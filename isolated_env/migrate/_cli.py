"""The ``isolated-env migrate`` verbs. Registering them imports nothing heavy: LibCST loads when a
verb runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    migrate = sub.add_parser("migrate", help="move a mock-based suite onto real services (scan, ratchet, rewrite)")
    verbs = migrate.add_subparsers(dest="verb", required=True)
    scan = verbs.add_parser("scan", help="find every mock and the service it stands in for")
    scan.add_argument("paths", nargs="*", default=["."], help="test files or directories (default: .)")
    scan.add_argument("--format", choices=("table", "json", "sarif"), default="table")
    scan.add_argument("--baseline", type=Path, help="show each count against this baseline")
    scan.add_argument("--output", "-o", type=Path, help="write the report here instead of stdout")
    scan.add_argument("--jobs", "-j", type=int, help="worker processes (default: one per core)")
    scan.add_argument("--no-resolve", action="store_true", help="do not look string targets up")
    ratchet = verbs.add_parser("ratchet", help="fail when a mock count grew past the baseline")
    ratchet.add_argument("paths", nargs="*", default=["."])
    ratchet.add_argument("--baseline", type=Path, required=True)
    ratchet.add_argument("--update", action="store_true", help="write the current counts as the baseline")
    ratchet.add_argument("--jobs", "-j", type=int)
    rewrite = verbs.add_parser("rewrite", help="replace fakes whose real API is identical, kept only if tests pass")
    rewrite.add_argument("paths", nargs="*", default=["."])
    rewrite.add_argument("--check", action="store_true", help="list the rewrites; change nothing (exit 1 if any)")
    rewrite.add_argument(
        "--pytest-arg",
        action="append",
        default=[],
        dest="pytest_args",
        help="an extra argument for the pytest run that checks a rewrite (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    from .._errors import IsolatedEnvError

    try:
        if args.verb == "scan":
            return _scan(args)
        if args.verb == "ratchet":
            return _ratchet(args)
        return _rewrite(args)
    except (IsolatedEnvError, FileNotFoundError) as exc:
        print(f"isolated-env migrate {args.verb}: {exc}", file=sys.stderr)
        return 2


def _scan(args: argparse.Namespace) -> int:
    from ._ratchet import load_baseline
    from ._report import render
    from ._scan import scan

    baseline = load_baseline(args.baseline) if args.baseline is not None else None
    report = scan(args.paths, jobs=args.jobs, resolve=not args.no_resolve)
    text = render(report, args.format, baseline)
    if args.output is not None:
        args.output.write_text(text + "\n")
    else:
        print(text)
    return 0


def _ratchet(args: argparse.Namespace) -> int:
    from ._ratchet import load_baseline, ratchet, write_baseline
    from ._scan import scan

    counts = scan(args.paths, jobs=args.jobs).counts()
    if args.update:
        write_baseline(args.baseline, counts)
        print(f"baseline written to {args.baseline}: {counts['sites']} sites")
        return 0
    verdict = ratchet(counts, load_baseline(args.baseline))
    for line in verdict.grew:
        print(f"grew: {line}")
    for line in verdict.shrank:
        print(f"shrank: {line}")
    if not verdict.ok:
        print(
            f"the ratchet holds: {len(verdict.grew)} count(s) grew past {args.baseline}; remove the new "
            "mocks (or, if they must stay, `--update` the baseline in the same change)",
            file=sys.stderr,
        )
        return 1
    if verdict.shrank:
        print(
            f"fewer mocks than the baseline: lock the progress in with `isolated-env migrate ratchet "
            f"--baseline {args.baseline} --update`"
        )
    else:
        print(f"no count grew: {counts['sites']} sites, as in {args.baseline}")
    return 0


def _rewrite(args: argparse.Namespace) -> int:
    from ._rewrite import rewrite

    result = rewrite(args.paths, check=args.check, pytest_args=args.pytest_args)
    print(result.summary())
    return 1 if args.check and result.pending else 0
