"""Corpus: nesting, unittest classes, patch arguments, several sites on one statement."""

import os
import unittest
from unittest import IsolatedAsyncioTestCase, mock
from unittest.mock import MagicMock, patch

import clickhouse_connect
import websockets
from redis import asyncio as aioredis


@patch("app.notify.websockets.connect")  # expect: patch websocket
class TestNotifier(unittest.TestCase):
    @patch("app.notify.slack_webhook.post")  # expect: patch http
    def test_sends(self, post, connect):
        with patch("app.notify.time.monotonic", return_value=0):  # expect: patch clock
            with patch.object(os, "getcwd", return_value="/"):  # expect: patch.object filesystem
                pass
        post.assert_called_once()
        connect.assert_called()

    def test_nested_function(self):
        def helper():
            return MagicMock(spec=clickhouse_connect.driver.Client)  # expect: MagicMock clickhouse

        self.assertIsNotNone(helper())


class TestAsync(IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.redis = mock.AsyncMock(spec=aioredis.Redis)  # expect: AsyncMock redis

    @mock.patch("app.realtime.ws_client.send")  # expect: patch websocket
    async def test_realtime(self, send):
        self.assertEqual(await self.redis.get("k"), await self.redis.get("k"))


def test_parenthesised_with():
    with (
        patch("app.users.repository.fetch_user") as fetch,  # expect: patch postgres
        patch("app.users.cache.get", new=MagicMock(return_value=None)),  # expect: patch redis
        patch.object(websockets, "serve"),  # expect: patch.object websocket
    ):
        fetch.assert_not_called()


def test_patch_in_expression():
    assert patch("app.models.User.save", autospec=True) is not None  # expect: patch internal


def test_internal_collaborators():
    with patch("app.pricing.discount_for") as discount:  # expect: patch internal
        discount.return_value = 10
    with patch.object(Calculator, "add", return_value=3):  # expect: patch.object internal
        pass
    assert Calculator().add(1, 2) == 3


class Calculator:
    def add(self, a, b):
        return a + b
