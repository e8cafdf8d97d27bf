"""Corpus: fakes, HTTP recorders and stubs, fake clocks, SQLite standing in for PostgreSQL."""

import sqlite3

import aiosqlite
import boto3
import fakeredis
import fakeredis.aioredis
import pytest
import respx
import responses
import time_machine
import vcr
from aioresponses import aioresponses
from fakeredis import FakeAsyncRedis, FakeServer
from fakeredis import FakeRedis as FR
from freezegun import freeze_time
from moto import mock_aws, mock_s3
from pytest_httpserver import HTTPServer
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import StaticPool

my_vcr = vcr.VCR(cassette_library_dir="cassettes")  # expect: vcr http


def test_fakeredis():
    server = FakeServer()  # expect: fakeredis redis
    r1 = fakeredis.FakeRedis(server=server)  # expect: fakeredis redis
    r2 = FR(decode_responses=True)  # expect: fakeredis redis
    r3 = fakeredis.FakeStrictRedis()  # expect: fakeredis redis
    assert r1 and r2 and r3


async def test_async_fakeredis():
    r = FakeAsyncRedis()  # expect: fakeredis redis
    legacy = fakeredis.aioredis.FakeRedis()  # expect: fakeredis redis
    assert await r.ping() and legacy


@mock_aws  # expect: moto http
def test_moto():
    with mock_s3():  # expect: moto http
        boto3.client("s3").create_bucket(Bucket="b")
    assert True


@responses.activate  # expect: responses http
def test_responses():
    responses.add(responses.GET, "https://api.example.invalid/x", json={})
    with responses.RequestsMock() as rsps:  # expect: responses http
        rsps.add(responses.GET, "https://api.example.invalid/y")
    assert len(responses.calls) == 0


@respx.mock  # expect: respx http
async def test_respx():
    with respx.mock(base_url="https://api.example.invalid") as router:  # expect: respx http
        router.get("/x")
    with respx.mock:  # expect: respx http
        pass
    assert respx.calls.call_count == 0


async def test_aioresponses():
    with aioresponses() as m:  # expect: aioresponses http
        m.get("https://api.example.invalid/x", payload={})
    assert m


@vcr.use_cassette("fixtures/x.yaml")  # expect: vcr http
def test_vcr():
    with my_vcr.use_cassette("y.yaml"):  # expect: vcr http
        pass
    assert True


@pytest.mark.vcr  # expect: vcr http
def test_pytest_recording():
    assert True


@pytest.mark.vcr("other.yaml")  # expect: vcr http
@pytest.mark.default_cassette("z.yaml")  # expect: vcr http
def test_pytest_recording_args():
    assert True


def test_httpserver_class():
    server = HTTPServer()  # expect: httpserver http
    server.start()
    server.stop()
    assert not server.is_running()


@freeze_time("2024-01-01")  # expect: freezegun clock
def test_freezegun():
    with freeze_time("2024-02-01"):  # expect: freezegun clock
        pass
    assert True


@time_machine.travel("2024-01-01")  # expect: time-machine clock
def test_time_machine():
    with time_machine.travel(0, tick=False):  # expect: time-machine clock
        pass
    assert True


def test_sqlite_stand_ins():
    engine = create_engine("sqlite://")  # expect: sqlite-memory postgres
    memory = create_engine("sqlite:///:memory:", poolclass=StaticPool)  # expect: sqlite-memory postgres
    pysqlite = create_engine("sqlite+pysqlite:///:memory:")  # expect: sqlite-memory postgres
    conn = sqlite3.connect(":memory:")  # expect: sqlite-memory postgres
    on_disk = create_engine("sqlite:///app.db")
    real = create_engine("postgresql+psycopg://app@db/app")
    file_db = sqlite3.connect("local.db")
    assert engine and memory and pysqlite and conn and on_disk and real and file_db


async def test_async_sqlite():
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")  # expect: sqlite-memory postgres
    async with aiosqlite.connect(":memory:") as db:  # expect: sqlite-memory postgres
        await db.execute("select 1")
    assert engine
