import pytest
from django.conf import settings
from django.core.management import call_command

from isolated_env import sync


@pytest.fixture(scope="session")
def django_db_setup(django_db_blocker):
    """The session's test database: a private database of isolated_env, migrated once; each
    django_db test then runs in a transaction that is rolled back, as pytest-django does."""
    with sync.isolated_postgres() as db:
        settings.DATABASES["default"].update(db.django_settings())
        with django_db_blocker.unblock():
            call_command("migrate", verbosity=0)
        yield
