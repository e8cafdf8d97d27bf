import fakeredis
from shop import cache


def test_recall_what_was_remembered(cache_client):
    cache.remember(cache_client, "greeting", "hello")
    assert cache.recall(cache_client, "greeting") == "hello"


def test_remembered_values_expire(cache_client):
    cache.remember(cache_client, "greeting", "hello", ttl=30)
    assert 0 < cache_client.ttl("greeting") <= 30


def test_a_client_of_its_own():
    client = fakeredis.FakeRedis(decode_responses=True)
    client.set("visits", 1)
    client.incr("visits")
    assert client.get("visits") == "2"
    client.close()
