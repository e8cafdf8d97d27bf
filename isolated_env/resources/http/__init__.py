"""isolated_http(): a real HTTP/1.1 server on an ephemeral loopback port, answering by expectations.

``http.expect("GET", "/users/1").respond_json({...})`` declares a request and its answer; requests
that match nothing get a 500 and are recorded; ``check()`` (and the exit) raise every unmatched
request and unmet expectation with the reason. Any expectation can inject a fault instead: a delay,
a dropped connection, a 5xx, a 429 with Retry-After, a body trickled out slowly.

``tls=True`` serves https with a certificate of the run's test CA; ``route(host)`` sends
hard-coded hosts to the server (``intercept=True``: from every client of the process) and refuses
the rest; ``mode="record"/"replay"/"record_missing"`` answers what no expectation does from a
cassette or the real upstream.

The package, by idea: ``_handle`` (the handle and the factory), ``_expectation`` (one expected
request and its answer), ``_matching`` and ``_partial`` (whether a request matches, and why not),
``_faults`` (the injected faults), ``_server`` (HTTP/1.1 over anyio sockets, h11 as the parser,
TLS by anyio), ``_routes`` (routed hosts and the network guard, as httpx transports),
``_intercept`` (the process-wide patches of ``intercept=True``), ``_record`` (record/replay).
"""

from __future__ import annotations

from ._expectation import HttpExpectation, Responder
from ._handle import HttpHandle, isolated_http
from ._server import RecordedRequest

__all__ = ["HttpExpectation", "HttpHandle", "RecordedRequest", "Responder", "isolated_http"]
