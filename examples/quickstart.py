"""The README's first example, runnable: every kind of isolated resource in one Environment.

    python examples/quickstart.py
"""

from __future__ import annotations

import anyio

import isolated_env as ie

SCHEMA = ie.PostgresTemplate(sql="CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE)")


async def main() -> None:
    async with ie.Environment() as env:
        db = await env.enter(ie.isolated_postgres(template=SCHEMA))  # schema loaded once; rolled back on exit
        r = await env.enter(ie.isolated_redis())  # private logical database, flushed on exit
        ch = await env.enter(ie.isolated_clickhouse())  # private ClickHouse database, dropped on exit
        ws = await env.enter(ie.isolated_ws())  # real WebSocket server + connected client
        http = await env.enter(ie.isolated_http())  # real HTTP server with expectations + httpx client
        fs = await env.enter(ie.isolated_fs())  # private directory, removed on exit

        user_id = await db.fetchval("INSERT INTO users (email) VALUES ($1) RETURNING id", "a@example.com")
        await r.set(f"user:{user_id}", "cached")
        await ch.command("CREATE TABLE signups (id UInt64) ENGINE = MergeTree ORDER BY id")
        await ch.insert("signups", [[user_id]], column_names=["id"])
        await ws.send_message({"type": "user_created", "id": user_id})
        ack = await ws.receive_message()
        http.expect("GET", f"/users/{user_id}").respond_json({"id": user_id})
        fetched = (await http.client.get(f"/users/{user_id}")).json()
        await fs.write_text("audit.log", f"created {user_id}\n")

        print(f"user {user_id}: cached={await r.get(f'user:{user_id}')!r}, "
              f"clickhouse rows={await ch.command('SELECT count() FROM signups')}, ws reply={ack['type']}, "
              f"http={fetched}, file={await fs.read_text('audit.log')!r}")
        stats = env.statistics()
        print("setup ms: " + ", ".join(f"{k} {v:.2f}" for k, v in stats.setup_ms.items()))


if __name__ == "__main__":
    anyio.run(main)
