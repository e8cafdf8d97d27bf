from shop import sessions


async def test_a_session_belongs_to_its_user(mock_redis):
    await sessions.start(mock_redis, "s1", "ada")
    assert await sessions.user_of(mock_redis, "s1") == "ada"
    assert await sessions.user_of(mock_redis, "s2") is None


async def test_arithmetic_in_the_database(mock_database):
    assert await mock_database.fetchval("SELECT 1 + 1") == 2
