"""The configuration the adaptor's engine starts with (chdb's default has no query log).

Written next to the engine's data directory and named in the keeper connection's
``config-file`` option: a server's ``system.query_log``, and a default user that may read access
entities as a server's default user may.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_config"]

_CONFIG = """<clickhouse>
    <query_log>
        <database>system</database>
        <table>query_log</table>
        <flush_interval_milliseconds>500</flush_interval_milliseconds>
    </query_log>
    <user_directories replace="replace">
        <users_xml><path>{users}</path></users_xml>
    </user_directories>
</clickhouse>
"""
# The engine's own default user (in-process: the adaptor authenticates clients itself): as on a server, it may
# read access entities (SHOW ROW POLICIES, SHOW USERS); chdb keeps no store to create them in.
_USERS = """<clickhouse>
    <profiles><default/></profiles>
    <quotas><default/></quotas>
    <users>
        <default>
            <password></password>
            <networks><ip>::/0</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
            <access_management>1</access_management>
            <named_collection_control>1</named_collection_control>
        </default>
    </users>
</clickhouse>
"""


def write_config(data: Path) -> Path:
    """The engine's configuration, next to its data directory: a server's query log and default user."""
    users = data.parent / "chdb-users.xml"
    users.write_text(_USERS)
    config = data.parent / "chdb-config.xml"
    config.write_text(_CONFIG.format(users=users))
    return config
