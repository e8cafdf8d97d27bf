"""A ledger of spend against caps: what one test, or a session (:class:`LlmBudget`), may spend in
USD, tokens and calls, what it spent, and the worst cases its calls in flight hold.

A test's meter keeps a ledger of its own and, given ``session_budget=``, draws on a shared one
too: a call goes ahead only if both have room for its worst case, holds that worst case in both
while in flight, and is reconciled in both at the usage its answer reports.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Hashable
from decimal import Decimal
from typing import Any

from ..._errors import BudgetExceeded, ConfigError, UnpricedModel
from ._prices import VERSION

__all__ = ["Charge", "Ledger", "LlmBudget", "LlmUsage", "decimal_usd"]


def decimal_usd(name: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal, float)):
        raise ConfigError(f"{name}={value!r}: give a number of US dollars (a str or Decimal keeps it exact)")
    try:
        amount = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except ArithmeticError:
        raise ConfigError(f"{name}={value!r} is not a number of US dollars") from None
    if not amount.is_finite() or amount < 0:
        raise ConfigError(f"{name}={value!r} must be a finite amount >= 0")
    return amount


@dataclasses.dataclass(frozen=True)
class LlmUsage:
    """What the calls of one test (or one session budget) used. ``usd`` includes the worst case of
    every ``unknown`` call (one whose answer reported no usage); it is None when a call's model has
    no price."""

    requests: int = 0
    """Calls answered by a model (refused and failed ones are not)."""
    input_tokens: int = 0
    output_tokens: int = 0
    usd: Decimal | None = Decimal(0)
    unknown: int = 0
    """Calls whose usage nobody reported; charged at their pre-flight worst case."""
    refused: int = 0
    """Calls refused by a budget, a request cap or a rate limit (nothing was forwarded)."""


@dataclasses.dataclass
class Charge:
    input_tokens: int
    output_tokens: int
    usd: Decimal | None


class Ledger:
    """Caps (``usd``, ``tokens``, ``requests``; None: no cap), the spend against them and the
    reservations of calls in flight. ``names`` are how the caps are called in an error."""

    def __init__(self, usd: Any, tokens: int | None, requests: int | None, names: tuple[str, str, str]) -> None:
        self.names = names
        self.usd = None if usd is None else decimal_usd(names[0], usd)
        for name, cap in zip(names[1:], (tokens, requests), strict=True):
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
                raise ConfigError(f"{name}={cap!r}: give a whole number >= 0, or None for no limit")
        self.tokens = tokens
        self.requests = requests
        self.lock = threading.Lock()  # a session budget may be shared by loops in other threads
        self.reset()

    def reset(self) -> None:
        self.usage = LlmUsage()
        self.unpriced = 0
        self.started = 0
        self.reserved: dict[Hashable, Charge] = {}

    def refusal(self, index: int, model: str, worst: Charge) -> BudgetExceeded | None:
        """Why call ``index`` with this worst case may not start (None: it may)."""
        what = f"call #{index} ({model})"
        usd_name, tokens_name, requests_name = self.names
        held = self.reserved.values()
        if self.requests is not None and self.started >= self.requests:
            return BudgetExceeded(f"{what} was refused: {requests_name}={self.requests} calls were already made")
        if self.tokens is not None:
            used = self.usage.input_tokens + self.usage.output_tokens
            used += sum(c.input_tokens + c.output_tokens for c in held)
            if used + worst.input_tokens + worst.output_tokens > self.tokens:
                return BudgetExceeded(
                    f"{what} was refused: it could use up to {worst.input_tokens} input + {worst.output_tokens} "
                    f"output tokens, and {tokens_name}={self.tokens} has {max(self.tokens - used, 0)} left; "
                    f"lower max_tokens or raise {tokens_name}"
                )
        if self.usd is None:
            return None
        if worst.usd is None:
            return UnpricedModel(
                f"call #{index} was refused: model {model!r} has no price, so a budget cannot be kept "
                f"(price table {VERSION}); give one: isolated_llm(prices={{{model!r}: ie.Price(input='...', "
                "output='...')}})"
            )
        spent = (self.usage.usd or Decimal(0)) + sum((c.usd or Decimal(0)) for c in held)
        if spent + worst.usd > self.usd:
            return BudgetExceeded(
                f"{what} was refused: it could cost up to ${worst.usd} ({worst.input_tokens} input tokens at most "
                f"+ {worst.output_tokens} max output tokens), and {usd_name}=${self.usd} has ${self.usd - spent} "
                f"left; lower max_tokens or raise {usd_name}"
            )
        return None

    def hold(self, key: Hashable, worst: Charge) -> None:
        self.started += 1
        self.reserved[key] = worst

    def refused(self) -> None:
        self.usage = dataclasses.replace(self.usage, refused=self.usage.refused + 1)

    def release(self, key: Hashable) -> None:
        self.reserved.pop(key, None)

    def settle(self, key: Hashable, charge: Charge, unknown: bool, index: int, model: str) -> BudgetExceeded | None:
        """Replace the reservation under ``key`` by ``charge``; the error if that passes the cap."""
        self.reserved.pop(key, None)
        if charge.usd is None:
            self.unpriced += 1
        u = self.usage
        self.usage = dataclasses.replace(
            u,
            requests=u.requests + 1,
            input_tokens=u.input_tokens + charge.input_tokens,
            output_tokens=u.output_tokens + charge.output_tokens,
            usd=(u.usd or Decimal(0)) + (charge.usd or Decimal(0)),
            unknown=u.unknown + unknown,
        )
        if self.usd is not None and self.usage.usd is not None and self.usage.usd > self.usd:
            spent, name = self.usage.usd, self.names[0]
            return BudgetExceeded(f"call #{index} ({model}) brought the spend to ${spent}, past {name}=${self.usd}")
        return None

    def current(self) -> LlmUsage:
        return self.usage if not self.unpriced else dataclasses.replace(self.usage, usd=None)


class LlmBudget:
    """A budget shared by every ``isolated_llm(session_budget=...)`` that names it: the tests of a
    pytest session (one object, e.g. from a session-scoped fixture), several Environments, a script.

    ``usd`` (Decimal, or a str), ``tokens`` and ``requests`` cap the total of all of them, with the
    same pre-flight refusal and reconciliation as a test's own budget; each test keeps its own caps
    too. It counts the calls of one process: under pytest-xdist every worker has its own."""

    def __init__(self, usd: Any = None, *, tokens: int | None = None, requests: int | None = None) -> None:
        names = ("session budget usd", "session budget tokens", "session budget requests")
        self._ledger = Ledger(usd, tokens, requests, names)

    @property
    def usage(self) -> LlmUsage:
        """What every test drawing on this budget used so far (refused calls included in ``refused``)."""
        with self._ledger.lock:
            return self._ledger.current()

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    def __repr__(self) -> str:
        ledger = self._ledger
        caps = ", ".join(
            f"{name}={cap}"
            for name, cap in (("usd", ledger.usd), ("tokens", ledger.tokens), ("requests", ledger.requests))
            if cap is not None
        )
        return f"<LlmBudget {caps or 'no caps'} spent ${ledger.usage.usd} in {ledger.usage.requests} calls>"
