"""The loop two variants of one thing are measured in: batches, each running every variant in turn,
so drift of the machine (load, caches, a warming server) reaches all variants alike."""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable, Iterable


async def interleaved(
    variants: Iterable[str], batches: int, batch: Callable[[str], Awaitable[dict[str, float]]]
) -> dict[str, dict[str, float]]:
    """Run ``batch(variant)`` for every variant, ``batches`` times, interleaved; ``batch`` returns one
    figure per phase (ms). Returns, per variant and phase, the median over the batches."""
    names = list(variants)
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for _ in range(batches):
        for name in names:
            for phase, value in (await batch(name)).items():
                samples[name].setdefault(phase, []).append(value)
    return {name: {phase: statistics.median(values) for phase, values in phases.items()}
            for name, phases in samples.items()}
