"""Rate limits as the providers enforce them: token buckets for requests and tokens per minute, and
the headers each provider reports them with (OpenAI's ``x-ratelimit-*``, Anthropic's
``anthropic-ratelimit-*``), plus ``retry-after`` on a refusal.

A bucket holds up to its per-minute limit and refills continuously (limit / 60 per second), so a
burst of ``rpm`` calls passes and the next waits for the refill, as the providers document it.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time
from collections.abc import Callable

from ..._errors import ConfigError
from ._answer import Wire
from ._offline import NO_RETRY, provider_error
from ._wire import LlmRequest, upper_bound_tokens

__all__ = ["Buckets", "RateLimit", "go_duration", "limit"]


@dataclasses.dataclass(frozen=True)
class RateLimit:
    """Requests (``rpm``) and tokens (``tpm``) per minute; None leaves that one unlimited. Tokens are
    counted as the providers count them before a call: its input (upper bound) plus its ``max_tokens``."""

    rpm: int | None = None
    tpm: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"RateLimit({name}={value!r}): give a whole number >= 1 per minute, or None")


class _Bucket:
    def __init__(self, limit: int, now: float) -> None:
        self.limit = limit
        self.level = float(limit)
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + (now - self.stamp) * self.limit / 60.0)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 if it is now; inf if it never fits)."""
        if amount > self.limit:
            return math.inf
        return max(0.0, (amount - self.level) * 60.0 / self.limit)

    def full_in(self) -> float:
        return (self.limit - self.level) * 60.0 / self.limit


class Buckets:
    """The buckets of one test's server, and the headers that describe them."""

    def __init__(self, limit: RateLimit | None, clock: Callable[[], float] = time.monotonic) -> None:
        if limit is not None and not isinstance(limit, RateLimit):
            raise ConfigError(f"rate_limit={limit!r}: give ie.RateLimit(rpm=..., tpm=...)")
        self._clock = clock
        self._limit = limit
        self.reset()

    def reset(self) -> None:
        """Full buckets again."""
        now, limit = self._clock(), self._limit
        self.requests = _Bucket(limit.rpm, now) if limit and limit.rpm else None
        self.tokens = _Bucket(limit.tpm, now) if limit and limit.tpm else None

    @property
    def active(self) -> bool:
        return self.requests is not None or self.tokens is not None

    def take(self, tokens: int) -> tuple[float, str] | None:
        """Take one request and ``tokens``; None when granted, else (seconds to wait, which limit)."""
        now = self._clock()
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.refill(now)
        if self.requests is not None and (wait := self.requests.wait_for(1)) > 0:
            return wait, "requests"
        if self.tokens is not None and (wait := self.tokens.wait_for(tokens)) > 0:
            return wait, "tokens"
        if self.requests is not None:
            self.requests.level -= 1
        if self.tokens is not None:
            self.tokens.level -= tokens
        return None

    def headers(self, provider: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for name, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is None:
                continue
            remaining = str(max(0, math.floor(bucket.level)))
            if provider == "openai":
                out += [
                    (f"x-ratelimit-limit-{name}", str(bucket.limit)),
                    (f"x-ratelimit-remaining-{name}", remaining),
                    (f"x-ratelimit-reset-{name}", go_duration(bucket.full_in())),
                ]
            else:
                at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=bucket.full_in())
                out += [
                    (f"anthropic-ratelimit-{name}-limit", str(bucket.limit)),
                    (f"anthropic-ratelimit-{name}-remaining", remaining),
                    (f"anthropic-ratelimit-{name}-reset", at.strftime("%Y-%m-%dT%H:%M:%SZ")),
                ]
        return out


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it (Go's style): ``17ms``, ``1s``, ``6m0s``, ``1h2m3.5s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms" if seconds > 0 else "0s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes:
        return f"{int(minutes)}m{text}"
    return text


def limit(buckets: Buckets, request: LlmRequest) -> list[tuple[str, str]] | Wire:
    """The rate-limit headers for ``request``, or the 429 that refuses it."""
    if not buckets.active:
        return []
    tokens = upper_bound_tokens(request) + (request.max_tokens or 0)
    refused = buckets.take(tokens)
    headers = buckets.headers(request.provider)
    if refused is None:
        return headers
    wait, which = refused
    if wait == float("inf"):
        message = f"this call needs {tokens} tokens, more than the whole tpm limit (isolated_llm)"
        return provider_error(request, "rate_limit", message, [*headers, *NO_RETRY])
    message = (
        f"Rate limit reached for {request.model} on {which} per min: please try again in {wait:.3f}s (isolated_llm)"
    )
    retry = str(max(1, int(-(-wait // 1))))
    return provider_error(request, "rate_limit", message, [*headers, ("retry-after", retry)])
