import pytest
from django.db import IntegrityError, connection
from shop.models import Product


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["tea", "coffee"])
def test_products_start_empty(name):
    assert Product.objects.count() == 0
    Product.objects.create(name=name, price_cents=250)
    assert Product.objects.get(name=name).price_cents == 250


@pytest.mark.django_db
def test_unique_names_are_enforced_by_postgres():
    assert connection.vendor == "postgresql"
    Product.objects.create(name="tea", price_cents=1)
    with pytest.raises(IntegrityError):
        Product.objects.create(name="tea", price_cents=2)


@pytest.mark.django_db(transaction=True)
def test_transactional_tests_work_too():
    Product.objects.create(name="cocoa", price_cents=300)
    assert Product.objects.count() == 1
