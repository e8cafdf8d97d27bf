"""Login sessions in Redis (redis.asyncio API)."""


async def start(redis, session_id, user, ttl=1800):
    await redis.set(f"session:{session_id}", user, ex=ttl)


async def user_of(redis, session_id):
    raw = await redis.get(f"session:{session_id}")
    return raw.decode() if isinstance(raw, bytes) else raw
