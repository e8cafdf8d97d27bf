"""The chdb adaptor: the ClickHouse engine from ``chdb`` served over the ClickHouse HTTP interface.

A program of its own (``python -m isolated_env._servers.chdb``), started by
:mod:`isolated_env._servers.clickhouse`. :mod:`.protocol`, :mod:`.sql`, :mod:`.compression` and
:mod:`.reply` speak the HTTP interface and need no engine; :mod:`.engine` runs queries on chdb,
:mod:`.stream` streams their results, :mod:`.config` is the engine's configuration; :mod:`.app`
is the ASGI app and its uvicorn server. Importing this package imports none of them.

What a request can carry, as on a real server: the query in the ``query`` parameter, the body or
both (the body is appended after a newline); ``INSERT ... FORMAT <fmt>`` followed by data; the
``database``, ``default_format``, ``query_id``, ``session_id``/``session_timeout``/``session_check``
parameters; multipart forms and external data; ``param_<name>`` values for ``{name:Type}``
placeholders; any query setting as a parameter; gzip/deflate/lz4/zstd request bodies
(``Content-Encoding``) and responses (``enable_http_compression=1`` + ``Accept-Encoding``). Replies
carry ``X-ClickHouse-Query-Id``, ``-Format`` (for a statement with a result table), ``-Timezone``,
``-Summary``, ``-Exception-Tag`` and, on failure, ``-Exception-Code`` with the engine's own
``Code: N. DB::Exception: ...`` text in the body; a failure after rows were streamed is written
into the body as a server's exception block. Not
supported (answered with ``Code: 48 NOT_IMPLEMENTED``): ClickHouse's own block compression
(``compress``/``decompress=1``), which clickhouse-connect does not use.
"""
