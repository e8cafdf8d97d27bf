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
from ._prices import TABLE, VERSION
from ._wire import LlmRequest, upper_bound_tokens

__all__ = ["Meter", "Price", "Prices", "LlmUsage", "price_of"]

_MILLION = Decimal(1_000_000)
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


def _decimal(name: str, value: Any) -> Decimal:
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
class Price:
    """What a model costs: ``input`` and ``output`` in USD per million tokens, and ``max_output``,
    the most tokens it answers with when a request sets no ``max_tokens`` (the pre-flight worst case)."""

    input: Decimal
    output: Decimal
    max_output: int = 4096

    def __init__(self, input: Decimal | str | int, output: Decimal | str | int, max_output: int = 4096) -> None:
        object.__setattr__(self, "input", _decimal("input", input))
        object.__setattr__(self, "output", _decimal("output", output))
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


@dataclasses.dataclass(frozen=True)
class LlmUsage:
    """What the calls of one test used. ``usd`` includes the worst case of every ``unknown`` call (one
    whose answer reported no usage); it is None when a call's model has no price."""

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
class _Charge:
    input_tokens: int
    output_tokens: int
    usd: Decimal | None


class Meter:
    """One test's budget: refuses calls pre-flight, reconciles them afterwards, and keeps the
    errors (BudgetExceeded, UnpricedModel) the test must see."""

    def __init__(
        self,
        *,
        budget_usd: Any = None,
        budget_tokens: int | None = None,
        max_requests: int | None = None,
        prices: Prices = None,
    ) -> None:
        self.budget_usd = None if budget_usd is None else _decimal("budget_usd", budget_usd)
        for name, cap in (("budget_tokens", budget_tokens), ("max_requests", max_requests)):
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
                raise ConfigError(f"{name}={cap!r}: give a whole number >= 0, or None for no limit")
        if prices is not None and not callable(prices) and not isinstance(prices, Mapping):
            raise ConfigError(f"prices={prices!r}: give a mapping of model name to ie.Price, or a function")
        if isinstance(prices, Mapping):
            bad = [k for k, v in prices.items() if not isinstance(v, Price)]
            if bad:
                raise ConfigError(f"prices: {bad[0]!r} is not priced with ie.Price(input=..., output=...)")
        self.budget_tokens = budget_tokens
        self.max_requests = max_requests
        self.prices = prices
        self.errors: list[BudgetExceeded] = []
        self.reset()

    def reset(self) -> None:
        self._usage = LlmUsage()
        self._unpriced = 0
        self._started = 0
        self._reserved: dict[int, _Charge] = {}

    @property
    def usage(self) -> LlmUsage:
        return self._usage if not self._unpriced else dataclasses.replace(self._usage, usd=None)

    def worst_case(self, request: LlmRequest) -> _Charge:
        price = price_of(request.model, self.prices)
        tokens_in = upper_bound_tokens(request)
        tokens_out = (
            0
            if request.api == "embeddings"
            else (request.max_tokens if request.max_tokens is not None else (price.max_output if price else 4096))
        )
        return _Charge(tokens_in, tokens_out, price.cost(tokens_in, tokens_out) if price else None)

    def preflight(self, request: LlmRequest) -> BudgetExceeded | None:
        """None if ``request`` may go ahead (its worst case is then reserved); else the error,
        also kept for the test's exit. A refused call is not started."""
        worst = self.worst_case(request)
        held = list(self._reserved.values())
        refusal: BudgetExceeded | None = None
        if self.max_requests is not None and self._started >= self.max_requests:
            refusal = BudgetExceeded(
                f"call #{request.index} ({request.model}) was refused: max_requests="
                f"{self.max_requests} calls were already made"
            )
        elif self.budget_tokens is not None:
            used = (
                self._usage.input_tokens
                + self._usage.output_tokens
                + sum(c.input_tokens + c.output_tokens for c in held)
            )
            if used + worst.input_tokens + worst.output_tokens > self.budget_tokens:
                refusal = BudgetExceeded(
                    f"call #{request.index} ({request.model}) was refused: it could use up to "
                    f"{worst.input_tokens} input + {worst.output_tokens} output tokens, and budget_tokens="
                    f"{self.budget_tokens} has {max(self.budget_tokens - used, 0)} left; lower max_tokens or "
                    "raise budget_tokens"
                )
        if refusal is None and self.budget_usd is not None:
            if worst.usd is None:
                refusal = UnpricedModel(
                    f"call #{request.index} was refused: model {request.model!r} has no price, so a budget "
                    f"cannot be kept (price table {VERSION}); give one: "
                    f"isolated_llm(prices={{{request.model!r}: ie.Price(input='...', output='...')}})"
                )
            else:
                spent = (self._usage.usd or Decimal(0)) + sum((c.usd or Decimal(0)) for c in held)
                if spent + worst.usd > self.budget_usd:
                    refusal = BudgetExceeded(
                        f"call #{request.index} ({request.model}) was refused: it could cost up to "
                        f"${worst.usd} ({worst.input_tokens} input tokens at most + {worst.output_tokens} "
                        f"max output tokens), and budget_usd=${self.budget_usd} has ${self.budget_usd - spent} "
                        "left; lower max_tokens or raise budget_usd"
                    )
        if refusal is not None:
            self.errors.append(refusal)
            self._usage = dataclasses.replace(self._usage, refused=self._usage.refused + 1)
            return refusal
        self._started += 1
        self._reserved[request.index] = worst
        return None

    def refused_elsewhere(self) -> None:
        """A call the rate limit refused after the budget let it through."""
        self._usage = dataclasses.replace(self._usage, refused=self._usage.refused + 1)

    def settle(self, request: LlmRequest, input_tokens: int | None, output_tokens: int | None) -> None:
        """Replace the reservation of ``request`` by what it used (None: unknown, the worst case stays)."""
        worst = self._reserved.pop(request.index, None) or self.worst_case(request)
        unknown = input_tokens is None or output_tokens is None
        if unknown:
            charge = worst
        else:
            assert input_tokens is not None and output_tokens is not None
            price = price_of(request.model, self.prices)
            charge = _Charge(input_tokens, output_tokens, price.cost(input_tokens, output_tokens) if price else None)
        if charge.usd is None:
            self._unpriced += 1
        u = self._usage
        self._usage = dataclasses.replace(
            u,
            requests=u.requests + 1,
            input_tokens=u.input_tokens + charge.input_tokens,
            output_tokens=u.output_tokens + charge.output_tokens,
            usd=(u.usd or Decimal(0)) + (charge.usd or Decimal(0)),
            unknown=u.unknown + unknown,
        )
        if self.budget_usd is not None and self._usage.usd is not None and self._usage.usd > self.budget_usd:
            self.errors.append(
                BudgetExceeded(
                    f"call #{request.index} ({request.model}) brought the spend to ${self._usage.usd}, past "
                    f"budget_usd=${self.budget_usd}"
                )
            )

    def release(self, request: LlmRequest) -> None:
        """``request`` was not answered by a model (a fault, an error): its reservation is freed."""
        self._reserved.pop(request.index, None)

    def report(self) -> BudgetExceeded | None:
        """The error for the budget problems not reported yet (which then count as reported)."""
        errors, self.errors = self.errors, []
        if not errors:
            return None
        if len(errors) == 1:
            return errors[0]
        kind = UnpricedModel if all(isinstance(e, UnpricedModel) for e in errors) else BudgetExceeded
        return kind(f"{len(errors)} budget problems:\n" + "\n".join(f"  {n}. {e}" for n, e in enumerate(errors, 1)))
