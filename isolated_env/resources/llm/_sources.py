"""Where answers come from when the mode is not ``offline``: a cassette (replay), an upstream
provider (live), or both (record, record_missing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..._errors import ConfigError
from .._inprocess import Problem, ProblemLog
from ._answer import Wire
from ._wire import LlmRequest

__all__ = ["MODES", "Source", "open_source"]

MODES = ("offline", "replay", "record", "record_missing", "live")


class Source(Protocol):
    async def answer(
        self, request: LlmRequest, extra: Sequence[tuple[str, str]], problems: ProblemLog
    ) -> tuple[Wire, list[float] | None]: ...

    def unmet(self) -> list[Problem]: ...

    async def aclose(self, problems: ProblemLog) -> None: ...


def open_source(mode: str, cassette: Any, timing: str, upstream: Mapping[str, str] | str | None) -> Source | None:
    if mode == "offline":
        if cassette is not None:
            raise ConfigError(
                "isolated_llm(cassette=...) is for the replay and record modes; offline answers from llm.respond(...)"
            )
        return None
    raise ConfigError(f"isolated_llm(mode={mode!r}) is not available yet")
