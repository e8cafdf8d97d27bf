"""Budgets in ``Decimal``: prices, the pre-flight estimate that refuses a call which could pass the
budget, and the reconciliation of what each call really used.

Pre-flight, a call is charged its worst case: the upper bound of its input tokens (see ``_wire``)
plus its ``max_tokens`` (or the model's largest output) at the output price. Calls in flight hold
that reservation, so concurrent calls cannot pass the budget together. Afterwards the reservation is
replaced by the usage the answer reports; an answer that reports none (a stream without
``include_usage``) stays charged at its worst case and is counted as ``unknown`` — never as $0.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, TypeAlias

from ..._errors import BudgetExceeded, ConfigError, UnpricedModel
from ._ledger import Charge, Ledger, LlmBudget, LlmUsage, decimal_usd
from ._prices import TABLE
from ._wire import LlmRequest, upper_bound_tokens

__all__ = ["LlmBudget", "LlmUsage", "Meter", "Price", "Prices", "price_of"]

_MILLION = Decimal(1_000_000)
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


@dataclasses.dataclass(frozen=True)
class Price:
    """What a model costs: ``input`` and ``output`` in USD per million tokens, and ``max_output``,
    the most tokens it answers with when a request sets no ``max_tokens`` (the pre-flight worst case)."""

    input: Decimal
    output: Decimal
    max_output: int = 4096

    def __init__(self, input: Decimal | str | int, output: Decimal | str | int, max_output: int = 4096) -> None:
        object.__setattr__(self, "input", decimal_usd("input", input))
        object.__setattr__(self, "output", decimal_usd("output", output))
        if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 0:
            raise ConfigError(f"max_output={max_output!r}: give a whole number of tokens >= 0")
        object.__setattr__(self, "max_output", max_output)

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        return (self.input * input_tokens + self.output * output_tokens) / _MILLION


Prices: TypeAlias = Mapping[str, Price] | Callable[[str], Price | None] | None
"""The test's own prices: a mapping of model name to Price, or a function of the model name."""


def price_of(model: str, prices: Prices = None) -> Price | None:
    """The price of ``model``: the test's own first, then the pinned table (a dated snapshot or
    ``-latest`` alias costs what its base name costs); None when nobody prices it."""
    base = _SNAPSHOT.sub("", model)
    if callable(prices):
        own = prices(model)
        if own is not None:
            return own
    elif prices is not None:
        for name in (model, base):
            if name in prices:
                return prices[name]
    for name in (model, base):
        row = TABLE.get(name)
        if row is not None:
            return Price(row[0], row[1], row[2])
    return None


class Meter:
    """One test's budget (and the session's it draws on): refuses calls pre-flight, reconciles
    them afterwards, and keeps the errors (BudgetExceeded, UnpricedModel) the test must see."""

    def __init__(
        self,
        *,
        budget_usd: Any = None,
        budget_tokens: int | None = None,
        max_requests: int | None = None,
        prices: Prices = None,
        session: LlmBudget | None = None,
    ) -> None:
        self._own = Ledger(budget_usd, budget_tokens, max_requests, ("budget_usd", "budget_tokens", "max_requests"))
        if prices is not None and not callable(prices) and not isinstance(prices, Mapping):
            raise ConfigError(f"prices={prices!r}: give a mapping of model name to ie.Price, or a function")
        if isinstance(prices, Mapping):
            bad = [k for k, v in prices.items() if not isinstance(v, Price)]
            if bad:
                raise ConfigError(f"prices: {bad[0]!r} is not priced with ie.Price(input=..., output=...)")
        if session is not None and not isinstance(session, LlmBudget):
            raise ConfigError(f"session_budget={session!r}: give an ie.LlmBudget(usd=..., tokens=..., requests=...)")
        self.prices = prices
        self._session = session.ledger if session is not None else None
        self.errors: list[BudgetExceeded] = []
        self._ledgers = (self._own,) if self._session is None else (self._own, self._session)

    def reset(self) -> None:
        """A fresh test's spend (the session's stays; this test's calls in flight there are freed)."""
        self.close()
        self._own.reset()

    def close(self) -> None:
        if self._session is not None:
            with self._session.lock:
                for key in [k for k in self._session.reserved if isinstance(k, tuple) and k[0] == id(self)]:
                    self._session.release(key)

    @property
    def usage(self) -> LlmUsage:
        return self._own.current()

    def worst_case(self, request: LlmRequest) -> Charge:
        price = price_of(request.model, self.prices)
        tokens_in = upper_bound_tokens(request)
        tokens_out = (
            0
            if request.api == "embeddings"
            else (request.max_tokens if request.max_tokens is not None else (price.max_output if price else 4096))
        )
        return Charge(tokens_in, tokens_out, price.cost(tokens_in, tokens_out) if price else None)

    def preflight(self, request: LlmRequest) -> BudgetExceeded | None:
        """None if ``request`` may go ahead (its worst case is then reserved, in the session's
        budget too); else the error, also kept for the test's exit. A refused call is not started."""
        worst = self.worst_case(request)
        refusal = self._own.refusal(request.index, request.model, worst)
        if refusal is None and self._session is not None:
            with self._session.lock:
                refusal = self._session.refusal(request.index, request.model, worst)
                if refusal is None:
                    self._session.hold((id(self), request.index), worst)
                else:
                    self._session.refused()
        if refusal is not None:
            self.errors.append(refusal)
            self._own.refused()
            return refusal
        self._own.hold(request.index, worst)
        return None

    def refused_elsewhere(self) -> None:
        """A call the rate limit refused after the budget let it through."""
        self._own.refused()

    def settle(self, request: LlmRequest, input_tokens: int | None, output_tokens: int | None) -> None:
        """Replace the reservation of ``request`` by what it used (None: unknown, the worst case stays)."""
        worst = self._own.reserved.get(request.index) or self.worst_case(request)
        unknown = input_tokens is None or output_tokens is None
        if unknown:
            charge = worst
        else:
            assert input_tokens is not None and output_tokens is not None
            price = price_of(request.model, self.prices)
            charge = Charge(input_tokens, output_tokens, price.cost(input_tokens, output_tokens) if price else None)
        for ledger, key in zip(self._ledgers, (request.index, (id(self), request.index)), strict=False):
            with ledger.lock:
                error = ledger.settle(key, charge, unknown, request.index, request.model)
            if error is not None:
                self.errors.append(error)

    def release(self, request: LlmRequest) -> None:
        """``request`` was not answered by a model (a fault, an error): its reservations are freed."""
        self._own.release(request.index)
        if self._session is not None:
            with self._session.lock:
                self._session.release((id(self), request.index))
    def report(self) -> BudgetExceeded | None:
        """The error for the budget problems not reported yet (which then count as reported)."""
        errors, self.errors = self.errors, []
        if not errors:
            return None
        if len(errors) == 1:
            return errors[0]
        kind = UnpricedModel if all(isinstance(e, UnpricedModel) for e in errors) else BudgetExceeded
        return kind(f"{len(errors)} budget problems:\n" + "\n".join(f"  {n}. {e}" for n, e in enumerate(errors, 1)))
