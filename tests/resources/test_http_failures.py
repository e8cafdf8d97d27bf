"""A failing test's report of what isolated_http saw: a few lines, told once."""

from __future__ import annotations

import pytest

_TESTS = """
import pytest
import isolated_env as ie


async def test_unmatched():
    async with ie.isolated_http() as http:
        http.expect("POST", "/users", json_contains={"name": "ann"}).respond(201)
        await http.client.post("/users", json={"name": "bob"})


async def test_fixture(isolated_http):
    isolated_http.expect("GET", "/a").respond(200).optional()
    await isolated_http.client.get("/b")


async def test_responder():
    def lookup(request):
        raise LookupError("no such user")

    async with ie.isolated_http() as http:
        http.expect("GET", "/a").respond_with(lookup)
        await http.client.get("/a")
"""


def _section(lines: list[str], title: str) -> list[str]:
    start = next(n for n, line in enumerate(lines) if title in line and line.startswith("_"))
    end = next(n for n in range(start + 1, len(lines)) if lines[n].startswith(("_", "=", "isolated_env:")))
    return lines[start + 1 : end]


def test_unmatched_requests_and_responder_errors_are_a_few_lines(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nanyio_mode = auto\n")
    pytester.makeconftest(
        "import pytest\n\n@pytest.fixture\ndef anyio_backend():\n    return 'asyncio'\n"
    )  # one backend, even where trio is installed
    pytester.makepyfile(test_it=_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2, passed=1, errors=1)
    lines = result.outlines
    # pytest's own short summary repeats each message (in full where CI is set); what is told is above it
    lines = lines[: next((i for i, line in enumerate(lines) if "short test summary info" in line), len(lines))]

    unmatched = _section(lines, "test_unmatched")
    assert len(unmatched) <= 6, "\n".join(unmatched)
    assert "POST /users matched no expectation" in unmatched[1]
    assert any("json body: $.name: 'bob' != 'ann'" in line for line in unmatched)

    teardown = _section(lines, "ERROR at teardown of test_fixture")
    assert len(teardown) == 3, "\n".join(teardown)
    assert "GET /b matched no expectation" in teardown[1]
    assert "GET /a: path '/b' != '/a'" in teardown[2]

    responder = _section(lines, "test_responder")
    assert len(responder) == 3, "\n".join(responder)
    assert "the responder of GET /a raised LookupError: no such user" in responder[1]
    assert responder[2].strip() == 'at test_it.py:18 in lookup: raise LookupError("no such user")'
    # told once: no second traceback of the LookupError anywhere in the output
    assert sum("LookupError" in line for line in lines) == sum("LookupError" in line for line in responder) == 2
