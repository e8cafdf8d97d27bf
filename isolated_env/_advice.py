"""Where a run's setup time went, and the one change that would cut it most (the pytest summary's
last lines).

Every figure is measured where the time is spent (:func:`isolated_env._metrics.phase`): a wait for
pool capacity, a wait for a database-mode clone, a template build, a server start (or the wait for
another process's), a new connection or slot; "fixture machinery" is what a test's setup took
beyond its resources' own setups. Phases are exclusive (a connection opened inside a clone wait
counts once), so the shares add up to the setup time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._metrics import CAPACITY_WAITS, CLONES, SERVER_STARTS, TEMPLATE_BUILDS

if TYPE_CHECKING:
    from ._metrics import Figures

__all__ = ["advice", "breakdown", "recommendation"]

DOMINANT = 0.2  # a cause under a fifth of the setup time is not worth changing a run for
MACHINERY = "fixture machinery"


def breakdown(figures: Figures) -> tuple[float, list[tuple[str, float]]]:
    """The setup time in milliseconds, and its parts, largest first ("other" last: the rest of the
    resources' setups, such as resets, leases and queries of their own)."""
    totals = figures.totals
    total = totals.get("setup", 0.0) + totals.get("outside", 0.0) + totals.get("machinery", 0.0)
    parts = {name: ms for name, ms in figures.phases.items() if ms > 0}
    if totals.get("machinery", 0.0) > 0:
        parts[MACHINERY] = totals["machinery"]
    ordered = sorted(parts.items(), key=lambda item: -item[1])
    other = total - sum(parts.values())
    if other > 0.005 * total:
        ordered.append(("other", other))
    return total, ordered


def recommendation(figures: Figures) -> str | None:
    """The one change that would help most, with its reason from the figures; None when no cause
    it could remove takes a fifth of the setup time."""
    total, _parts = breakdown(figures)
    if total <= 0:
        return None
    counts = figures.phase_counts
    candidates = {name: figures.phases.get(name, 0.0) for name in (CAPACITY_WAITS, CLONES, SERVER_STARTS)}
    if counts.get(TEMPLATE_BUILDS, 0) >= 2:  # one build is the price of a template; more recur
        candidates[TEMPLATE_BUILDS] = figures.phases.get(TEMPLATE_BUILDS, 0.0)
    name, ms = max(candidates.items(), key=lambda item: item[1])
    share = ms / total
    if share < DOMINANT:
        return None
    n = counts.get(name, 0)
    why = f"{ms:.0f} ms, {100 * share:.0f}% of setup"
    if name == CAPACITY_WAITS:
        return (f"raise the capacity (ISOLATED_ENV_CAPACITY) or switch to a larger profile "
                f"(--isolated-env-profile): {n} leases waited for a free slot, {why}")
    if name == CLONES:
        return (f"use transaction mode (isolated_postgres(), the default) where a test needs no database of "
                f"its own: {n} database-mode leases waited for clones, {why}")
    if name == TEMPLATE_BUILDS:
        return (f"pin the template's version (PostgresTemplate(version=...), with content that does not change "
                f"from run to run): {n} template builds took {why}")
    return f"keep the servers warm with `isolated-env up`: {n} server starts and joins took {why}"


def advice(figures: Figures) -> list[str]:
    """The summary's lines: where setup time went, then the recommendation (when there is one)."""
    total, parts = breakdown(figures)
    if total <= 0:
        return []
    went = ", ".join(f"{name} {ms:.0f} ms ({100 * ms / total:.0f}%)" for name, ms in parts)
    lines = [f"isolated_env: setup took {total:.0f} ms: {went}"]
    advised = recommendation(figures)
    if advised is not None:
        lines.append(f"  recommended: {advised}")
    return lines
