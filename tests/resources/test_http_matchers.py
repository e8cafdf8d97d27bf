"""expect()'s partial matchers: JSON subset, form fields, query subset, header regex/presence, host."""

from __future__ import annotations

import re

import pytest

from isolated_env._errors import ConfigError, ResourceCheckFailed
from isolated_env.resources.http import isolated_http


async def test_json_subset_matches_extra_keys_at_any_depth_and_explains_a_miss() -> None:
    async with isolated_http() as http:
        http.expect("POST", "/orders", json_contains={"customer": {"id": 7}, "items": [{"sku": "a"}]}).respond(201)
        ok = await http.client.post(
            "/orders", json={"customer": {"id": 7, "name": "Ann"}, "items": [{"sku": "a", "n": 2}], "note": "x"}
        )
        assert ok.status_code == 201
        miss = await http.client.post("/orders", json={"customer": {"id": 8}, "items": []})
        assert miss.status_code == 500
        with pytest.raises(ResourceCheckFailed) as info:
            http.check()
        text = str(info.value)
        assert "json body: $.customer.id: 8 != 7" in text
        assert "$.items: expected an array of 1" in text


async def test_json_subset_keeps_booleans_apart_from_numbers() -> None:
    async with isolated_http() as http:
        http.expect("POST", "/flag", json_contains={"on": True}).respond(204)
        assert (await http.client.post("/flag", json={"on": 1})).status_code == 500
        assert (await http.client.post("/flag", json={"on": True})).status_code == 204
        with pytest.raises(ResourceCheckFailed, match=r"\$.on: 1 != True"):
            http.check()


async def test_form_fields_and_query_subset() -> None:
    async with isolated_http() as http:
        http.expect("POST", "/login", form={"user": "ann", "scope": ["a", "b"]}).respond(200, "form")
        http.expect("GET", "/search", query_contains={"q": "cats"}).respond(200, "query")
        assert (await http.client.post("/login", data={"user": "ann", "scope": ["a", "b"], "x": "1"})).text == "form"
        assert (await http.client.get("/search", params={"q": "cats", "page": "2"})).text == "query"
        assert (await http.client.post("/login", json={"user": "ann"})).status_code == 500
        assert (await http.client.get("/search", params={"q": "dogs"})).status_code == 500
        with pytest.raises(ResourceCheckFailed) as info:
            http.check()
        text = str(info.value)
        assert "body is not a form (content-type 'application/json')" in text
        assert "query field 'q': 'dogs' != 'cats'" in text


async def test_headers_by_regex_presence_and_absence() -> None:
    async with isolated_http() as http:
        http.expect(
            "GET", "/me", headers={"authorization": re.compile(r"Bearer \w+"), "x-request-id": True, "x-debug": False}
        ).respond(200, "me")
        good = {"authorization": "Bearer abc", "x-request-id": "1"}
        assert (await http.client.get("/me", headers=good)).text == "me"
        bad = {"authorization": "Basic abc", "x-debug": "1"}
        assert (await http.client.get("/me", headers=bad)).status_code == 500
        with pytest.raises(ResourceCheckFailed) as info:
            http.check()
        text = str(info.value)
        assert "header authorization: 'Basic abc' does not match 'Bearer \\\\w+'" in text
        assert "header x-request-id is missing" in text
        assert "header x-debug is present ('1'), expected absent" in text


async def test_one_shot_and_ordered_still_hold_with_partial_matchers() -> None:
    async with isolated_http() as http:
        http.expect("POST", "/step", json_contains={"n": 1}, ordered=True).respond(200, "one")
        http.expect("POST", "/step", json_contains={"n": 2}, ordered=True).respond(200, "two")
        assert (await http.client.post("/step", json={"n": 2, "x": 0})).status_code == 500  # early
        assert (await http.client.post("/step", json={"n": 1})).text == "one"
        assert (await http.client.post("/step", json={"n": 1})).status_code == 500  # one-shot: used up
        assert (await http.client.post("/step", json={"n": 2})).text == "two"
        with pytest.raises(ResourceCheckFailed, match="out of order"):
            http.check()


async def test_bad_matcher_arguments_say_how_to_fix_them() -> None:
    async with isolated_http() as http:
        with pytest.raises(ConfigError, match="not json and form"):
            http.expect("POST", "/x", json={"a": 1}, form={"a": "1"})
        with pytest.raises(ConfigError, match="query_contains"):
            http.expect("GET", "/x", query="a=1", query_contains={"a": "1"})
        with pytest.raises(ConfigError, match=r"re\.Pattern"):
            http.expect("GET", "/x", headers={"x": 3})  # type: ignore[dict-item]
        with pytest.raises(ConfigError, match="list of strings"):
            http.expect("GET", "/x", form={"a": [1]})  # type: ignore[list-item]
