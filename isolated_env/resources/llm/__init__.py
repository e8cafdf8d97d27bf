"""isolated_llm(): a per-test OpenAI- and Anthropic-compatible server on loopback.

Answers Chat Completions, Responses, Embeddings and Anthropic Messages, streamed (SSE, the
providers' exact event shapes) or not, from a script (offline), a cassette (replay) or the real
provider (record); enforces budgets in Decimal and rate limits with the providers' headers; injects
faults on deterministic schedules.

The package, by idea: ``_handle`` (the handle, the factory, the gate every request passes),
``_server`` (the pooled h11 server and how an answer is written), ``_wire`` (reading a request,
counting tokens), ``_answer`` / ``_openai`` / ``_anthropic`` (the providers' shapes), ``_script``
(scripted responses and faults), ``_connect`` (connect faults), ``_budget`` / ``_ledger`` /
``_prices`` (money), ``_ratelimit`` (token buckets),
``_sources`` (replay, record, live).
"""

from __future__ import annotations

from ._budget import LlmBudget, LlmUsage, Price, price_of
from ._handle import LlmHandle, isolated_llm
from ._prices import VERSION as PRICES_VERSION
from ._ratelimit import RateLimit
from ._script import Fault, ScriptedResponse
from ._wire import LlmRequest

__all__ = [
    "PRICES_VERSION",
    "Fault",
    "LlmBudget",
    "LlmHandle",
    "LlmRequest",
    "LlmUsage",
    "Price",
    "RateLimit",
    "ScriptedResponse",
    "isolated_llm",
    "price_of",
]
