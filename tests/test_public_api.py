from __future__ import annotations

import isolated_env


def test_all_lists_every_public_name() -> None:
    public = {name for name in dir(isolated_env) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(isolated_env, name)).__name__ == "module"}
    assert set(isolated_env.__all__) == public - modules - {"annotations"}


def test_public_names_are_importable_and_documented() -> None:
    for name in isolated_env.__all__:
        obj = getattr(isolated_env, name)
        if callable(obj) and not isinstance(obj, type(isolated_env.UNSET)):
            assert obj.__doc__, f"{name} has no docstring"


def test_error_tree() -> None:
    for name in isolated_env.__all__:
        obj = getattr(isolated_env, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, isolated_env.IsolatedEnvError)
    assert issubclass(isolated_env.LeaseTimeout, TimeoutError)
    assert issubclass(isolated_env.ConfigError, ValueError)
