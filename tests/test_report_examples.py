"""The original report's examples, run as written against the plugin's fixtures."""

from __future__ import annotations

from typing import Any

import pytest

received: list[dict[str, Any]] = []


def handle_agent_started(message: dict[str, Any]) -> None:
    received.append(message)


# WebSocket testing with real server/client
async def test_agent_events(websocket_integration_environment):  # type: ignore[no-untyped-def]
    websocket = websocket_integration_environment['websocket']

    # Register handler for agent events
    websocket.register_message_handler('agent_started', handle_agent_started)

    # Send real WebSocket message
    await websocket.send_message({'type': 'agent_started', 'id': 'test_123'})

    # Receive real response
    response = await websocket.receive_message()
    assert response['type'] == 'ack'
    assert received[-1] == {'type': 'agent_started', 'id': 'test_123'}


@pytest.mark.requires_postgres
async def test_user_creation(isolated_database):  # type: ignore[no-untyped-def]
    await isolated_database.execute("CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL)")
    # Test with real database - transaction automatically rolls back
    user_id = await isolated_database.fetchval(
        "INSERT INTO users (email) VALUES ($1) RETURNING id",
        "test@example.com"
    )

    # Verify user exists in this transaction
    user = await isolated_database.fetchrow(
        "SELECT * FROM users WHERE id = $1",
        user_id
    )
    assert user is not None
    assert user['email'] == "test@example.com"


async def test_complete_user_workflow(comprehensive_test_environment):  # type: ignore[no-untyped-def]
    db = comprehensive_test_environment['database']
    redis = comprehensive_test_environment['redis']
    websocket = comprehensive_test_environment['websocket']
    await db.execute("CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL)")

    # Create user in real database
    user_id = await db.fetchval("INSERT INTO users (email) VALUES ('new@example.com') RETURNING id")

    # Cache in real Redis
    await redis.set(f"user:{user_id}", "user_data")

    # Send WebSocket notification
    await websocket.send_message({"type": "user_created", "user_id": user_id})

    # All services are real and isolated per test
    assert (await websocket.receive_message())["type"] == "ack"
    assert websocket.received[-1] == {"type": "user_created", "user_id": user_id}
    assert await redis.get(f"user:{user_id}") == b"user_data"
    http = comprehensive_test_environment['http']
    http.expect("GET", f"/users/{user_id}").respond_json({"id": user_id})
    assert (await http.client.get(f"/users/{user_id}")).json() == {"id": user_id}
    await comprehensive_test_environment['fs'].write_text("audit.log", f"created {user_id}\n")


async def test_workflow_left_nothing_behind(comprehensive_test_environment):  # type: ignore[no-untyped-def]
    assert await comprehensive_test_environment['database'].fetchval("SELECT to_regclass('users')") is None
    assert await comprehensive_test_environment['redis'].dbsize() == 0
    assert comprehensive_test_environment['fs'].listdir() == []
