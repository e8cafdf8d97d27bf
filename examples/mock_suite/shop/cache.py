"""A cache in front of slow lookups, on any redis-py client."""


def remember(client, key, value, ttl=60):
    client.set(key, value, ex=ttl)


def recall(client, key):
    value = client.get(key)
    return value.decode() if isinstance(value, bytes) else value
