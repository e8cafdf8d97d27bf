"""The resource contract itself: PooledResource over Pool, the generator form, Outcome and Kept,
the registry. No services: the instances here are plain objects, the machinery is what is tested."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import AsyncIterator, Hashable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

import isolated_env as ie
from isolated_env import _registry
from isolated_env._contract import current_settings
from isolated_env._resource import report_kept, resource


class Ledger:
    """Everything a pooled resource did, for the assertions."""

    def __init__(self) -> None:
        self.created = 0
        self.cleaned: list[int] = []
        self.destroyed: list[int] = []
        self.kept: list[int] = []
        self.fail_clean = False


class Box(ie.PooledResource[dict[str, Any], dict[str, Any]]):
    kind: ClassVar[str] = "box"

    def __init__(self, ledger: Ledger, *, keep_on_failure: bool | None = None) -> None:
        self.ledger = ledger
        self.keep_on_failure = keep_on_failure

    def pool_key(self) -> Hashable:
        return ("box", id(self.ledger), current_settings().capacity)

    async def create(self) -> dict[str, Any]:
        self.ledger.created += 1
        return {"n": self.ledger.created, "data": []}

    async def clean(self, item: dict[str, Any]) -> None:
        if self.ledger.fail_clean:
            raise RuntimeError("clean failed")
        item["data"].clear()
        self.ledger.cleaned.append(item["n"])

    async def destroy(self, item: dict[str, Any]) -> None:
        self.ledger.destroyed.append(item["n"])

    def wrap(self, item: dict[str, Any]) -> dict[str, Any]:
        return item

    async def keep(self, item: dict[str, Any]) -> ie.Kept:
        self.ledger.kept.append(item["n"])
        return ie.Kept("box", f"box {item['n']}", "look inside")


def box(ledger: Ledger, **kwargs: Any) -> ie.ResourceContext[dict[str, Any]]:
    return ie.ResourceContext(Box(ledger, **kwargs))


async def test_a_passed_instance_is_cleaned_and_reused() -> None:
    ledger = Ledger()
    async with box(ledger) as first:
        first["data"].append(1)
    async with box(ledger) as second:
        assert second is first and second["data"] == []
    assert ledger.created == 1 and ledger.cleaned == [1, 1] and ledger.destroyed == []


async def test_a_failed_clean_destroys_and_the_next_lease_is_new() -> None:
    ledger = Ledger()
    async with box(ledger):
        ledger.fail_clean = True
    ledger.fail_clean = False
    async with box(ledger) as fresh:
        assert fresh["n"] == 2
    assert ledger.destroyed == [1]


async def test_an_escaped_instance_is_never_reused() -> None:
    ledger = Ledger()
    async with ie.Environment() as env:
        await env.enter(box(ledger))
        env.outcome = ie.Outcome.ESCAPED
    assert ledger.destroyed == [1] and ledger.cleaned == []


async def test_failed_with_keep_keeps_and_frees_the_capacity() -> None:
    ledger = Ledger()
    async with ie.Environment(capacity=1) as env:
        held = await env.enter(box(ledger, keep_on_failure=True))
        env.outcome = ie.Outcome.FAILED
    assert env.kept == [ie.Kept("box", f"box {held['n']}", "look inside")]
    assert ledger.kept == [1] and ledger.destroyed == [] and ledger.cleaned == []
    async with ie.Environment(capacity=1) as env2:  # capacity 1 is free again, with a new instance
        again = await env2.enter(box(ledger, keep_on_failure=True))
        assert again["n"] == 2
    assert env2.kept == []


async def test_failed_without_keep_is_a_plain_release() -> None:
    ledger = Ledger()
    async with ie.Environment() as env:
        await env.enter(box(ledger))
        env.outcome = ie.Outcome.FAILED
    assert env.kept == [] and ledger.kept == [] and ledger.cleaned == [1]


async def test_an_exception_leaving_the_block_counts_as_failed() -> None:
    ledger = Ledger()
    with pytest.raises(ZeroDivisionError):
        async with box(ledger, keep_on_failure=True):
            1 / 0  # noqa: B018
    assert ledger.kept == [1]


async def test_keep_failed_setting_applies_when_the_resource_does_not_say(clean_environ: pytest.MonkeyPatch) -> None:
    clean_environ.setenv("ISOLATED_ENV_KEEP_FAILED", "1")
    ledger = Ledger()
    async with ie.Environment() as env:
        await env.enter(box(ledger))
        env.outcome = ie.Outcome.FAILED
    assert ledger.kept == [1]
    async with ie.Environment() as env:
        await env.enter(box(ledger, keep_on_failure=False))
        env.outcome = ie.Outcome.FAILED
    assert ledger.kept == [1]


async def test_reset_cleans_in_place_and_statistics_come_from_the_pool() -> None:
    ledger = Ledger()
    async with ie.Environment() as env:
        held = await env.enter(box(ledger))
        held["data"].append(1)
        await env.reset()
        assert held["data"] == [] and ledger.cleaned == [1]
        stats = env.statistics().pools["box"]
        assert stats.leased == 1 and stats.created == 1


async def test_a_resource_instance_can_be_entered_directly() -> None:
    ledger = Ledger()
    async with ie.Environment() as env:
        held = await env.enter(Box(ledger))
        assert env["box"] is held


# -- the generator form ----------------------------------------------------------------------

seen: list[Any] = []


@resource("gen")
async def gen(keep: bool = False) -> AsyncIterator[str]:
    outcome = yield "handle"
    seen.append(outcome)
    if keep and outcome is ie.Outcome.FAILED:
        report_kept(ie.Kept("gen", "here"))


async def test_the_generator_receives_the_outcome_and_can_report_what_it_kept() -> None:
    seen.clear()
    async with ie.Environment() as env:
        await env.enter(gen(keep=True))
        env.outcome = ie.Outcome.FAILED
    assert seen == [ie.Outcome.FAILED] and env.kept == [ie.Kept("gen", "here")]
    async with gen():
        pass
    assert seen[-1] is ie.Outcome.PASSED


async def test_the_generator_sees_the_blocks_exception() -> None:
    caught: list[BaseException] = []

    @resource("sees")
    async def sees() -> AsyncIterator[None]:
        try:
            yield
        except KeyError as exc:
            caught.append(exc)
            raise

    with pytest.raises(KeyError):
        async with sees():
            raise KeyError("x")
    assert len(caught) == 1


async def test_a_generator_that_yields_twice_is_an_error() -> None:
    @resource("twice")
    async def twice() -> AsyncIterator[int]:
        yield 1
        yield 2

    with pytest.raises(ie.IsolatedEnvError, match="yielded twice"):
        async with twice():
            pass


def test_report_kept_outside_a_release_is_an_error() -> None:
    with pytest.raises(ie.IsolatedEnvError, match="below its yield"):
        report_kept(ie.Kept("x", "y"))


def test_factories_carry_their_resource_class() -> None:
    cls = gen.resource_class  # type: ignore[attr-defined]
    assert cls.kind == "gen" and isinstance(cls(gen().resource._gen), ie.Resource)


# -- the registry ----------------------------------------------------------------------------


def test_builtin_specs_agree_with_their_classes() -> None:
    for entry in _registry.specs():
        if not entry.builtin:
            continue
        cls = entry.resource_class()
        assert (cls.kind, tuple(cls.aliases), cls.provider, cls.extra) == (
            entry.kind, entry.aliases, entry.provider, entry.extra
        ), entry.kind
    assert _registry.aliases()["database"] == "postgres"
    assert _registry.spec("websocket").kind == "ws"
    with pytest.raises(ie.ConfigError, match="no resource is registered as 'nope'"):
        _registry.spec("nope")


@pytest.fixture
def distribution(tmp_path: Path) -> Iterator[Path]:
    """A real installed distribution (dist-info on sys.path) whose entry point names ``value``."""
    sys.path.insert(0, str(tmp_path))
    _registry.specs.cache_clear()
    _registry.aliases.cache_clear()
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("ie_fake_")]:
            del sys.modules[name]
        _registry.specs.cache_clear()
        _registry.aliases.cache_clear()


def _install(root: Path, module: str, source: str, value: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[isolated_env.resources]\nthing = {value}\n")


def test_an_entry_point_registers_a_resource(distribution: Path) -> None:
    _install(distribution, "ie_fake_ok", """
        from collections.abc import AsyncIterator
        from isolated_env._resource import resource

        @resource("widget", aliases=("gadget",))
        async def isolated_widget() -> AsyncIterator[str]:
            '''A widget for one test.'''
            yield "w"
    """, "ie_fake_ok:isolated_widget")
    entry = _registry.spec("gadget")
    assert entry.kind == "widget" and not entry.builtin and entry.fixtures == ("isolated_widget", "isolated_gadget")
    assert entry.doc == "A widget for one test."


def test_an_entry_point_that_is_not_a_resource_is_refused(distribution: Path) -> None:
    _install(distribution, "ie_fake_bad", "def nothing(): pass\n", "ie_fake_bad:nothing")
    with pytest.raises(ie.ConfigError, match="is not a resource"):
        _registry.specs()


def test_an_entry_point_may_not_take_a_builtin_name(distribution: Path) -> None:
    _install(distribution, "ie_fake_clash", """
        from collections.abc import AsyncIterator
        from isolated_env._resource import resource

        @resource("redis")
        async def mine() -> AsyncIterator[str]:
            yield "r"
    """, "ie_fake_clash:mine")
    with pytest.raises(ie.ConfigError, match="already taken"):
        _registry.specs()
