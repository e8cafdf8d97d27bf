"""``isolated-env doctor``'s check of isolated_llm: a scripted answer comes back over real HTTP, and
one test's key is refused by another test's server."""

from __future__ import annotations

import httpx

from ..._errors import IsolatedEnvError, IsolationBroken, ResourceCheckFailed

__all__ = ["self_check"]

_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "doctor"}]}


async def self_check() -> None:
    from ._handle import isolated_llm

    async with isolated_llm() as one, isolated_llm() as two, httpx.AsyncClient(trust_env=False) as client:
        one.respond("ok")
        mine = {"authorization": f"Bearer {one.api_key}"}
        answer = await client.post(one.base_url + "/chat/completions", json=_BODY, headers=mine)
        if answer.status_code != 200 or answer.json()["choices"][0]["message"]["content"] != "ok":
            raise IsolatedEnvError(f"isolated_llm answered {answer.status_code} {answer.text[:200]!r}, not its script")
        crossed = await client.post(two.base_url + "/chat/completions", json=_BODY, headers=mine)
        if crossed.status_code != 401:
            raise IsolationBroken(f"one test's key reached another test's server ({crossed.status_code})")
        try:
            two.check()
        except ResourceCheckFailed:
            pass  # the refused key, recorded as it should be
        else:
            raise IsolationBroken("a request with another test's key was not recorded as a problem")
