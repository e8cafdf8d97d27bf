"""The chdb adaptor's HTTP interface pieces, on their own: none of this imports chdb or opens a socket."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
import zlib

import lz4.frame
import pytest
import zstandard

from isolated_env._servers.chdb import compression, reply
from isolated_env._servers.chdb.protocol import (
    USER,
    EngineError,
    ExternalTable,
    Outcome,
    authenticate,
    check_client,
    count_statements,
    decode_request,
    first_word,
    may_hold_several_statements,
    parse_form,
    parse_params,
    quote_ident,
    quote_literal,
    result_format,
    split_insert,
)

PASSWORD = b"s3cret"


def test_protocol_modules_import_no_chdb() -> None:
    code = (
        "import sys\n"
        "import isolated_env._servers.chdb.protocol, isolated_env._servers.chdb.compression\n"
        "import isolated_env._servers.chdb.reply, isolated_env._servers.chdb.app\n"
        "import isolated_env._servers.chdb.sql, isolated_env._servers.chdb.stream\n"
        "print(sorted(m for m in sys.modules if m == 'chdb' or m.startswith('chdb.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- INSERT splitting and statements ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"INSERT INTO t FORMAT Native\n\n\x01", (b"INSERT INTO t ", "Native", b"\n\x01")),
        (b"INSERT INTO t FORMAT Native \r\n \x00", (b"INSERT INTO t ", "Native", b" \x00")),
        (b"insert into `format` (`FORMAT`) format CSV 1", (b"insert into `format` (`FORMAT`) ", "CSV", b"1")),
        (
            b"INSERT /* FORMAT X */ INTO t -- FORMAT Y\nFORMAT TSV\n1",
            (b"INSERT /* FORMAT X */ INTO t -- FORMAT Y\n", "TSV", b"1"),
        ),
        (b"  -- lead\nINSERT INTO t FORMAT CSV\n1\n", (b"  -- lead\nINSERT INTO t ", "CSV", b"1\n")),
        (b"INSERT INTO t FORMAT CSV", (b"INSERT INTO t ", "CSV", b"")),
        (b"INSERT INTO t VALUES (1, 'FORMAT x')", None),
        (b"INSERT INTO t SELECT 1 FORMAT TSV", None),
        (b"INSERT INTO t FORMAT", None),
        (b"SELECT 1 FORMAT Native", None),
        (b"(INSERT INTO t FORMAT CSV\n1)", None),
    ],
)
def test_split_insert(text: bytes, expected: tuple[bytes, str, bytes] | None) -> None:
    assert split_insert(text) == expected


@pytest.mark.parametrize(
    ("sql", "count"),
    [
        ("SELECT 1", 1),
        ("SELECT 1;", 1),
        ("SELECT 1; SELECT 2", 2),
        ("SELECT 1;;SELECT 2;", 2),
        ("SELECT ';'", 1),
        ("SELECT `a;b`, \"c;d\"", 1),
        ("SELECT 1 /* ; SELECT 2 */", 1),
        ("SELECT 1; -- SELECT 2", 1),
        ("SELECT 'it\\'s;'; SELECT 2", 2),
        ("", 0),
        ("  ;  ", 0),
    ],
)
def test_count_statements(sql: str, count: int) -> None:
    assert count_statements(sql) == count


def test_only_text_after_a_semicolon_needs_counting() -> None:
    assert may_hold_several_statements("SELECT 1; SELECT 2")
    assert not may_hold_several_statements("SELECT 1;")
    assert not may_hold_several_statements("SELECT 1;  \n")


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1 FORMAT JSONEachRow", "JSONEachRow"),
        ("select 1 format csv;", "csv"),
        ("SELECT 'FORMAT CSV' AS x", "TabSeparated"),
        ("SELECT 1", "TabSeparated"),
        ("/* c */ (SELECT 1)", "TabSeparated"),
        ("SHOW TABLES", "TabSeparated"),
        ("CREATE TABLE t (a Int8) ENGINE = Memory", None),
        ("-- why\n set max_threads = 1", None),
        ("DROP TABLE t SYNC", None),
        ("INSERT INTO t SELECT 1", None),
    ],
)
def test_result_format(sql: str, expected: str | None) -> None:
    # A statement without a result table gets no format: clickhouse-connect's command() then
    # returns its QuerySummary, as from a server.
    assert result_format(sql, "TabSeparated") == expected


def test_query_text_that_is_not_utf8_reaches_the_engine_as_sent() -> None:
    query = decode_request("POST", {}, {}, b"SELECT 'a\xff\xfe'")
    assert query.sql.encode("utf-8", "surrogateescape") == b"SELECT 'a\xff\xfe'"
    assert first_word("  (( select 1))") == b"SELECT" and first_word("'x'") == b""


# -- request decoding ---------------------------------------------------------------------------


def test_parse_params_keeps_blanks_decodes_utf8_and_takes_the_last_repeat() -> None:
    assert parse_params(b"query=SELECT%201&a=&a=2&b=%C3%A9") == {"query": "SELECT 1", "a": "2", "b": "é"}


def _multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[str, bytes]:
    boundary = "b0undary"
    chunks = []
    for name, filename, payload in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + payload + b"\r\n")
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks) + f"--{boundary}--\r\n".encode()


def test_parse_form_separates_fields_and_files() -> None:
    content_type, body = _multipart([("query", None, "SELECT é".encode()), ("t", "t.tsv", b"1\n2\n")])
    assert parse_form(content_type, body) == ({"query": "SELECT é"}, [("t", b"1\n2\n")])


def test_parse_form_refuses_a_body_without_parts() -> None:
    with pytest.raises(EngineError) as refused:
        parse_form("multipart/form-data", b"no parts")
    assert refused.value.code == 36


def test_query_parameter_and_body_are_joined_by_a_newline() -> None:
    query = decode_request("POST", {}, {"query": "SELECT"}, b"1")
    assert query.sql == "SELECT\n1"
    assert query.insert_format is None and query.data == b""


def test_an_insert_with_data_is_split() -> None:
    query = decode_request("POST", {}, {"query": "INSERT INTO t FORMAT CSV"}, b"1,2\n")
    assert (query.sql, query.insert_format, query.data) == ("INSERT INTO t ", "CSV", b"1,2\n")


def test_parameters_are_sorted_into_settings_placeholders_and_http() -> None:
    params = {
        "query": "SELECT {v:String}", "param_v": "a\\tb", "max_threads": "2", "database": "db1",
        "default_format": "JSON", "session_id": "s", "session_timeout": "5", "session_check": "1",
        "query_id": "q", "enable_http_compression": "1",
    }
    query = decode_request("POST", {}, params, b"")
    assert query.params == {"v": "a\\tb"}
    assert query.settings == {"max_threads": "2"}
    assert (query.database, query.default_format) == ("db1", "JSON")
    assert (query.session_id, query.session_timeout, query.session_check) == ("s", 5.0, True)


def test_defaults_of_a_bare_query() -> None:
    query = decode_request("POST", {}, {}, b"SELECT 1")
    assert (query.database, query.default_format, query.session_id) == (None, "TabSeparated", None)
    assert (query.session_timeout, query.session_check, query.settings) == (60.0, False, {})


def test_get_is_readonly_unless_the_client_says_otherwise() -> None:
    assert decode_request("GET", {}, {"query": "SELECT 1"}, b"").settings == {"readonly": "2"}
    assert decode_request("GET", {}, {"query": "SELECT 1", "readonly": "1"}, b"").settings == {"readonly": "1"}
    assert decode_request("POST", {}, {"query": "SELECT 1"}, b"").settings == {}


@pytest.mark.parametrize(
    ("params", "body", "code"),
    [
        ({}, b"  \n", 62),
        ({"session_timeout": "soon"}, b"SELECT 1", 36),
        ({"compress": "1"}, b"SELECT 1", 48),
        ({"decompress": "true"}, b"SELECT 1", 48),
    ],
)
def test_bad_requests_are_clickhouse_errors(params: dict[str, str], body: bytes, code: int) -> None:
    with pytest.raises(EngineError) as refused:
        decode_request("POST", {}, params, body)
    assert refused.value.code == code
    assert refused.value.message.startswith(f"Code: {code}. DB::Exception: ")


def test_a_compressed_body_is_decoded_and_an_unknown_encoding_refused() -> None:
    assert decode_request("POST", {"content-encoding": "gzip"}, {}, gzip.compress(b"SELECT 7")).sql == "SELECT 7"
    with pytest.raises(EngineError) as refused:
        decode_request("POST", {"content-encoding": "br"}, {}, b"x")
    assert refused.value.code == 48 and "br" in refused.value.message


def test_multipart_fields_become_parameters_and_files_external_tables() -> None:
    content_type, body = _multipart([
        ("query", None, b"SELECT * FROM a, b"), ("param_x", None, b"1"),
        ("a", "a.csv", b"1,x\n"), ("a_structure", None, b"n Int32, s String"), ("a_format", None, b"CSV"),
        ("b", "b.tsv", b"2\n"), ("b_types", None, b"Int8, String"),
    ])
    query = decode_request("POST", {"content-type": content_type}, {"max_threads": "1"}, body)
    assert query.sql == "SELECT * FROM a, b" and query.params == {"x": "1"}
    assert query.settings == {"max_threads": "1"}  # the tables' own fields are no settings
    assert query.external == (
        ExternalTable("a", "n Int32, s String", "CSV", b"1,x\n"),
        ExternalTable("b", "_1 Int8, _2 String", "TabSeparated", b"2\n"),
    )


def test_an_external_table_needs_a_structure() -> None:
    content_type, body = _multipart([("query", None, b"SELECT 1"), ("t", "t.tsv", b"1\n")])
    with pytest.raises(EngineError) as refused:
        decode_request("POST", {"content-type": content_type}, {}, body)
    assert refused.value.code == 36 and "external table t" in refused.value.message


# -- compression --------------------------------------------------------------------------------

_FRAMES = {
    "lz4": lambda data: bytes(lz4.frame.compress(data)),
    "zstd": zstandard.ZstdCompressor().compress,
    "gzip": gzip.compress,
}


@pytest.mark.parametrize("encoding", ["lz4", "zstd", "gzip"])
def test_request_bodies_of_several_frames(encoding: str) -> None:
    frame = _FRAMES[encoding]
    assert compression.decompress(frame(b"SELECT 1") + frame(b" + 2"), encoding) == b"SELECT 1 + 2"


@pytest.mark.parametrize("encoding", compression.ENCODINGS)
@pytest.mark.parametrize("level", [0, 3, 99])
def test_replies_round_trip_at_any_level(encoding: str, level: int) -> None:
    data = b"row\t1\n" * 1000
    packed = compression.compress(data, encoding, level)
    assert len(packed) < len(data)
    assert compression.decompress(packed, encoding) == data


def test_deflate_and_identity() -> None:
    assert compression.decompress(zlib.compress(b"x"), "deflate") == b"x"
    assert compression.decompress(b"x", "identity") == compression.decompress(b"x", "") == b"x"


def test_unknown_encodings_are_refused_both_ways() -> None:
    with pytest.raises(compression.UnknownEncoding):
        compression.decompress(b"x", "br")
    with pytest.raises(compression.UnknownEncoding):
        compression.compress(b"x", "br", 3)


@pytest.mark.parametrize(
    ("accept", "enabled", "expected"),
    [
        ("gzip, zstd", "1", "gzip"),
        ("br;q=1.0, ZSTD;q=0.5", "true", "zstd"),
        ("br", "1", None),
        ("gzip", "0", None),
        ("", "1", None),
    ],
)
def test_response_encoding(accept: str, enabled: str, expected: str | None) -> None:
    headers = {"accept-encoding": accept}
    assert compression.response_encoding(headers, {"enable_http_compression": enabled}) == expected


def test_compression_level() -> None:
    assert compression.compression_level({}) == 3
    assert compression.compression_level({"http_zlib_compression_level": ""}) == 3
    assert compression.compression_level({"http_zlib_compression_level": "7"}) == 7
    with pytest.raises(ValueError, match="must be an integer"):
        compression.compression_level({"http_zlib_compression_level": "fast"})


# -- the client ---------------------------------------------------------------------------------


def _basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        (_basic(USER, "s3cret"), {}),
        ({"x-clickhouse-user": USER, "x-clickhouse-key": "s3cret"}, {}),
        ({"x-clickhouse-key": "s3cret"}, {}),
        ({}, {"user": USER, "password": "s3cret"}),
    ],
)
def test_the_user_is_accepted_wherever_it_comes_from(headers: dict[str, str], params: dict[str, str]) -> None:
    authenticate(headers, params, PASSWORD)


@pytest.mark.parametrize(
    ("headers", "params", "code"),
    [
        ({}, {}, 194),
        ({"authorization": "Basic !!!"}, {}, 194),
        (_basic(USER, "wrong"), {}, 516),
        (_basic("admin", "s3cret"), {}, 516),
        ({}, {"password": "s3cre"}, 516),
    ],
)
def test_others_are_refused(headers: dict[str, str], params: dict[str, str], code: int) -> None:
    with pytest.raises(EngineError) as refused:
        authenticate(headers, params, PASSWORD)
    assert refused.value.code == code


def test_only_loopback_peers() -> None:
    for host in ("127.0.0.1", "127.3.4.5", "::1", None):
        check_client(host)
    for host in ("10.1.2.3", "::ffff:10.0.0.1", "localhost"):
        with pytest.raises(EngineError) as refused:
            check_client(host)
        assert refused.value.code == 195


# -- replies and errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"), [(194, 401), (516, 403), (62, 400), (60, 404), (115, 404), (48, 501), (159, 408), (1, 500)]
)
def test_status_for(code: int, status: int) -> None:
    assert reply.status_for(code) == status


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("JSONEachRow", "application/x-ndjson; charset=UTF-8"),
        ("CSVWithNames", "text/csv; charset=UTF-8; header=present"),
        ("RowBinaryWithNamesAndTypes", "application/octet-stream"),
        ("Native", "application/octet-stream"),
        ("Pretty", "text/plain; charset=UTF-8"),
    ],
)
def test_content_type(fmt: str, expected: str) -> None:
    assert reply.content_type(fmt) == expected


def test_engine_errors_keep_the_engine_text() -> None:
    wrapped = EngineError.from_engine(RuntimeError("insert failed: Code: 60. DB::Exception: Unknown table. (X)"))
    assert (wrapped.code, wrapped.message) == (60, "Code: 60. DB::Exception: Unknown table. (X)")
    plain = EngineError.from_engine(RuntimeError("something else"))
    assert (plain.code, plain.message) == (1001, "Code: 1001. DB::Exception: something else")


def test_error_reply_adds_the_version_once() -> None:
    status, body, headers = reply.error_reply(EngineError.of(60, "UNKNOWN_TABLE", "no t"), "26.9")
    assert status == 404
    assert body == b"Code: 60. DB::Exception: no t. (UNKNOWN_TABLE) (version 26.9)\n"
    assert ("x-clickhouse-exception-code", "60") in headers
    _, again, _ = reply.error_reply(EngineError(60, "Code: 60. x (version 1.0)"), "26.9")
    assert again == b"Code: 60. x (version 1.0)\n"


def test_success_headers_carry_format_and_summary() -> None:
    figures = reply.summary(read_rows=3, written_rows=2, result_bytes=9, elapsed=0.5)
    headers = dict(reply.success_headers(Outcome(b"", "JSONEachRow", figures), "TAG1"))
    assert headers["x-clickhouse-format"] == "JSONEachRow" and headers["x-clickhouse-exception-tag"] == "TAG1"
    assert headers["content-type"] == "application/x-ndjson; charset=UTF-8"
    sent = json.loads(headers["x-clickhouse-summary"])
    assert sent["read_rows"] == "3" and sent["written_rows"] == "2" and sent["result_bytes"] == "9"
    assert sent["elapsed_ns"] == "500000000" and " " not in headers["x-clickhouse-summary"]


def test_a_statement_without_a_table_has_no_format_header() -> None:
    headers = dict(reply.success_headers(Outcome(b"", None, reply.summary()), "TAG1"))
    assert "x-clickhouse-format" not in headers and headers["content-type"].startswith("text/plain")


def test_the_exception_block_is_found_by_the_client() -> None:
    from clickhouse_connect.driver.transform import extract_exception_with_tag

    block = reply.exception_block(EngineError(395, "Code: 395. DB::Exception: boom. (X)"), "26.9", "ABC123")
    assert block.startswith(b"\r\n__exception__\r\nABC123\r\n")
    assert extract_exception_with_tag(b"rows" + block, "ABC123") == "Code: 395. DB::Exception: boom. (X) (version 26.9)"
    assert extract_exception_with_tag(b"rows" + block, "OTHER") is None


def test_common_headers() -> None:
    assert dict(reply.common_headers("host", "q1", "UTC")) == {
        "x-clickhouse-server-display-name": "host", "x-clickhouse-query-id": "q1", "x-clickhouse-timezone": "UTC",
    }


def test_encoded_headers_stay_on_one_latin1_line() -> None:
    raw = reply.encode_headers([("x-clickhouse-query-id", "a\r\nSet-Cookie: x"), ("x-n", "é€")], 12)
    assert raw == [
        (b"x-clickhouse-query-id", b"a  Set-Cookie: x"), (b"x-n", b"\xe9?"), (b"content-length", b"12"),
    ]


def test_quoting() -> None:
    assert quote_literal("it's a \\ test") == "'it\\'s a \\\\ test'"
    assert quote_ident("odd`name\\") == "`odd\\`name\\\\`"
