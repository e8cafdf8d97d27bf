"""What the isolated_llm tests share: a raw HTTP call to the server, and SSE frames read back."""

from __future__ import annotations

import httpx

from isolated_env.resources.llm import LlmHandle

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


async def post(
    llm: LlmHandle, path: str, body: dict[str, object], *, key: str | None = None, anthropic: bool = False
) -> httpx.Response:
    root = llm.anthropic_base_url + "/v1" if anthropic else llm.base_url
    headers = {"x-api-key": key or llm.api_key} if anthropic else {"authorization": f"Bearer {key or llm.api_key}"}
    async with httpx.AsyncClient(trust_env=False) as client:
        return await client.post(root + path, json=body, headers=headers)


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) of each SSE frame."""
    out = []
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        event = None
        data = []
        for line in frame.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        out.append((event, "\n".join(data)))
    return out
