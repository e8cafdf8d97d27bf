"""The pinned price table: USD per million tokens, and the largest output a model may produce.

Pinned and versioned: a price change here is a reviewed change of ``VERSION``, never a download at
run time. A model missing from the table has no price, and a budgeted call to it fails closed
(``UnpricedModel``) unless the test gives one (``isolated_llm(prices={...})``).

A dated snapshot (``gpt-4o-mini-2024-07-18``, ``claude-3-5-haiku-20241022``) or a ``-latest`` alias
costs what its base name costs; nothing else is matched loosely (``gpt-4o`` never prices
``gpt-4o-mini``).
"""

from __future__ import annotations

__all__ = ["TABLE", "VERSION"]

VERSION = "2025-11-01"
"""The date the prices below were read from the providers' published price lists."""

# model: (input USD / 1M tokens, output USD / 1M tokens, max output tokens)
TABLE: dict[str, tuple[str, str, int]] = {
    # OpenAI
    "gpt-5": ("1.25", "10.00", 128_000),
    "gpt-5-mini": ("0.25", "2.00", 128_000),
    "gpt-5-nano": ("0.05", "0.40", 128_000),
    "gpt-4.1": ("2.00", "8.00", 32_768),
    "gpt-4.1-mini": ("0.40", "1.60", 32_768),
    "gpt-4.1-nano": ("0.10", "0.40", 32_768),
    "gpt-4o": ("2.50", "10.00", 16_384),
    "gpt-4o-mini": ("0.15", "0.60", 16_384),
    "gpt-4-turbo": ("10.00", "30.00", 4_096),
    "gpt-3.5-turbo": ("0.50", "1.50", 4_096),
    "o1": ("15.00", "60.00", 100_000),
    "o3": ("2.00", "8.00", 100_000),
    "o3-mini": ("1.10", "4.40", 100_000),
    "o4-mini": ("1.10", "4.40", 100_000),
    "text-embedding-3-small": ("0.02", "0", 0),
    "text-embedding-3-large": ("0.13", "0", 0),
    "text-embedding-ada-002": ("0.10", "0", 0),
    # Anthropic
    "claude-opus-4-5": ("5.00", "25.00", 64_000),
    "claude-opus-4-1": ("15.00", "75.00", 32_000),
    "claude-opus-4": ("15.00", "75.00", 32_000),
    "claude-sonnet-4-5": ("3.00", "15.00", 64_000),
    "claude-sonnet-4": ("3.00", "15.00", 64_000),
    "claude-3-7-sonnet": ("3.00", "15.00", 64_000),
    "claude-haiku-4-5": ("1.00", "5.00", 64_000),
    "claude-3-5-haiku": ("0.80", "4.00", 8_192),
    "claude-3-haiku": ("0.25", "1.25", 4_096),
}
