"""What the login named by TEST_*_URL may do on a shared server, for ``isolated-env doctor``.

A fleet should use least privilege (docs/fleet.md): a PostgreSQL role with ``CREATEDB`` and not
superuser, a Redis ACL user without ``FLUSHALL``/``CONFIG``, a ClickHouse user that may create
databases. Each check returns lines of ``(level, text)``: ``ok``, ``warning`` (works, but more
than a fleet should grant) or ``missing`` (a mode is unavailable; the text says which and what
still works). Nothing is changed on the server: Redis rights are asked of ``ACL DRYRUN``, never
tried.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Finding", "check", "clickhouse", "postgres", "redis"]

Finding = tuple[str, str]


async def postgres(server: Any) -> list[Finding]:
    from ._drivers import asyncpg as driver

    conn = await driver.connect(server)
    try:
        row = await conn.fetchrow(
            "SELECT rolname, rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user"
        )
    finally:
        await driver.close(conn)
    role, superuser, createdb = row["rolname"], row["rolsuper"], row["rolcreatedb"]
    if superuser:
        return [("warning", f"role {role} is a superuser: everything works, but a fleet's role needs only "
                            f"CREATEDB (ALTER ROLE {role} NOSUPERUSER CREATEDB; see docs/fleet.md)")]
    if not createdb:
        return [("missing", f"this role lacks CREATEDB: database mode unavailable; transaction mode works "
                            f"(in the database the URL names); fix: ALTER ROLE {role} CREATEDB")]
    return [("ok", f"role {role} has CREATEDB and is not superuser: both modes work, with leases")]


_NEEDED = (("EVAL", "return 1", "0"), ("FLUSHDB",), ("SELECT", "1"), ("SET", "ie:slot:1", "x", "NX", "PX", "1"))
_UNWANTED = (("FLUSHALL",), ("CONFIG", "SET", "maxmemory", "0"), ("SWAPDB", "1", "2"), ("DEBUG", "SLEEP", "0"))


async def redis(server: Any) -> list[Finding]:
    from redis.exceptions import ResponseError

    from ._drivers import redis as redis_driver

    client = redis_driver.asyncio_client(**server.client_kwargs(0))
    try:
        try:
            whoami = await client.execute_command("ACL", "WHOAMI")
        except ResponseError:  # NOPERM, or a server without ACLs (before Redis 6)
            return [("warning", "this login may not run ACL WHOAMI, so its rights are unknown; see docs/fleet.md")]
        user = whoami.decode() if isinstance(whoami, bytes) else str(whoami)

        async def allowed(command: tuple[str, ...]) -> bool | None:
            """Whether ``user`` may run ``command`` (asked, not tried); None when it may not ask."""
            try:
                reply = await client.execute_command("ACL", "DRYRUN", user, *command)
            except ResponseError:  # NOPERM for ACL DRYRUN, or a server before Redis 7
                return None
            return reply in (b"OK", "OK")

        findings: list[Finding] = []
        denied = [c[0] for c in _NEEDED if await allowed(c) is False]
        if denied:
            findings.append(("missing", f"ACL user {user} may not run {', '.join(denied)}: isolated_redis "
                                        "cannot lease, flush or select databases; grant "
                                        f"+{' +'.join(c.lower() for c in denied)}"))
        unknown: list[str] = []
        granted: list[str] = []
        for command in _UNWANTED:
            state = await allowed(command)
            if state is None:
                unknown.append(command[0])
            elif state:
                granted.append(command[0])
        if granted:
            findings.append(("warning", f"ACL user {user} may run {', '.join(granted)}: one test (or bug) could "
                                        f"reach every run's data or the server; ACL SETUSER {user} "
                                        + " ".join(f"-{c.lower()}" for c in granted)))
        if unknown:
            findings.append(("warning", f"ACL user {user} may not run ACL DRYRUN, so whether it may run "
                                        f"{', '.join(unknown)} is unknown; see docs/fleet.md for the grants"))
        if not findings:
            findings.append(("ok", f"ACL user {user}: FLUSHALL, CONFIG, SWAPDB and DEBUG denied; what leases "
                                   "need is granted"))
        return findings
    finally:
        await client.aclose()


async def clickhouse(server: Any) -> list[Finding]:
    from ._drivers import clickhouse as ch_driver

    client = await ch_driver.connect(**server.client_kwargs(server.database), autogenerate_session_id=False)
    try:
        try:
            grants = [str(r[0]) for r in (await client.query("SHOW GRANTS")).result_rows]
        except Exception as exc:  # an engine without access control (the embedded one): nothing to read
            return [("ok", f"no grants to read ({type(exc).__name__}): the server has no access control")]
    finally:
        await client.close()
    text = " ".join(grants).upper()
    if "ALL ON *.*" in text or "CREATE DATABASE" in text or "CREATE ON *.*" in text:
        return [("ok", f"user {server.username} may create databases: database mode works")]
    return [("missing", f"user {server.username} may not create databases: database mode unavailable; "
                        "isolated_clickhouse(mode='prefix') works; fix: GRANT CREATE DATABASE ON *.* TO "
                        f"{server.username}")]


async def check(kind: str, server: Any) -> list[Finding]:
    """The findings for the server of ``kind`` (none for a kind with no checks)."""
    fn = {"postgres": postgres, "redis": redis, "clickhouse": clickhouse}.get(kind)
    return await fn(server) if fn is not None else []
