"""uvicorn's httptools protocol (GatewayHttpProtocol), running each request as a
GatewayCycle (edge.http_cycle: the leaner response path), with four guards
uvicorn lacks against clients slow or hostile (ConnectionLimits):

* a header section must arrive within ``header_timeout_s`` of its first byte
  (or of the connection opening): uvicorn has no such clock, so a client
  sending one byte at a time, or nothing, held its connection for ever;
* a body that spans reads must arrive within ``body_timeout_s`` (408);
* a header section over ``max_header_bytes`` is refused with 431: httptools
  buffers any amount;
* a client that reads nothing of a response for ``send_timeout_s`` is cut off
  (abort, as close would wait on the buffer it does not read), which cancels
  the generation behind it; uvicorn waits on it for ever.

Everything else (parsing, keep-alive, pipelining, flow control, 100-continue,
disconnects, WebSocket upgrades, limit_concurrency) is uvicorn's own; uvicorn
is pinned, and tests/edge/test_http_protocol_guard.py fails when a method
copied or overridden here or in edge.http_cycle changes upstream.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import httptools
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from llm_gateway.edge.http_cycle import GatewayCycle


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How long a client may take, and how large a header section it may send
    (the settings of the same names)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 300.0
    send_timeout_s: float = 60.0
    max_header_bytes: int = 1 << 16


class HeadTooLarge(Exception):
    """Raised in a parser callback; httptools hands it back as the error's context."""


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, running each request as a GatewayCycle, with
    the clocks and the header cap of ConnectionLimits (see the module docstring).

    ``on_headers_complete`` and ``data_received`` are uvicorn's own, with these
    additions; ``with_limits`` makes the class uvicorn.Config is given.
    """

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    _deadline: asyncio.TimerHandle | None = None  # the header or the body clock
    _in_head = False  # a request has begun and its header section is not complete
    _head_bytes = 0  # bytes read since it began: at least its header section's size
    _chunk = 0  # the size of the read being parsed

    @classmethod
    def with_limits(cls, limits: ConnectionLimits) -> type[GatewayHttpProtocol]:
        return cast(type[GatewayHttpProtocol], type(cls.__name__, (cls,), {"limits": limits}))

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._set_deadline(self.limits.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._clear_deadline()

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        self._chunk = len(data)
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, HeadTooLarge):
                self._refuse(431, "Request header fields too large.")
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # Inline of the common case (a whole request read, nothing left to clock):
        # no call at all, as this runs for every read.
        cycle = self.cycle
        if self._in_head or (self._deadline is None and cycle is not None and cycle.more_body):
            self._after_read()

    def _after_read(self) -> None:
        """Cap a header section still arriving, and start its clock or its body's."""
        if self.transport.is_closing():
            return
        if self._in_head:
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(431, "Request header fields too large.")
            elif self._deadline is None:
                self._set_deadline(self.limits.header_timeout_s, self._head_timed_out)
        elif self._deadline is None and self._reading_body():
            self._set_deadline(self.limits.body_timeout_s, self._body_timed_out)

    def _reading_body(self) -> bool:
        cycle = self.cycle
        return (
            cycle is not None
            and cycle.more_body
            and not cycle.response_complete
            and not self.pipeline
        )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = self._chunk

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._deadline is not None:
            self._clear_deadline()

    def _head_too_large(self) -> bool:
        """Called once the bytes read exceed the cap: they bound the section's size,
        so most requests never count it."""
        limit = self.limits.max_header_bytes
        return len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) > limit

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._deadline is not None:
            self._clear_deadline()
        if self._head_bytes > self.limits.max_header_bytes and self._head_too_large():
            raise HeadTooLarge()
        parser = self.parser
        http_version = parser.get_http_version()
        scope = self.scope
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = parsed_url.query or b""
        self._start_cycle(http_version != "1.0" and parser.should_keep_alive())

    def _start_cycle(self, keep_alive: bool) -> None:
        """uvicorn's end of on_headers_complete, with a GatewayCycle."""
        existing_cycle = self.cycle
        self.cycle = cycle = GatewayCycle(
            scope=self.scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=keep_alive,
            on_response=self.on_response_complete,
        )
        cycle.loop = self.loop
        cycle.send_timeout = self.limits.send_timeout_s
        app = self._app()
        if existing_cycle is None or existing_cycle.response_complete:
            self._start_asgi_task(cycle, app)
        else:  # pipelined: queued until the response before it is complete
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))

    def _app(self) -> Any:
        """The app, or uvicorn's 503 over limit_concurrency (connections or requests)."""
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            self.logger.warning("Exceeded concurrency limit.")
            return service_unavailable
        return self.app

    def _set_deadline(self, delay: float, callback: Any) -> None:
        self._clear_deadline()
        self._deadline = self.loop.call_later(delay, callback)

    def _clear_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_timed_out(self) -> None:
        """408 to a request whose header section is late; a silent close when none began."""
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._in_head:
            self._refuse(408, "Request header timeout.")
        else:
            self.transport.close()

    def _body_timed_out(self) -> None:
        """408 to a request whose body is late (a close once its response began); the
        app's receive() says http.disconnect."""
        self._deadline = None
        cycle = self.cycle
        if self.transport.is_closing() or not cycle.more_body or cycle.response_complete:
            return
        cycle.disconnected = True
        cycle.message_event.set()
        if cycle.response_started:
            self.transport.close()
        else:
            self._refuse(408, "Request body timeout.")

    def _refuse(self, status: int, message: str) -> None:
        """uvicorn's send_400_response, for any status: plain text, then close."""
        body = message.encode("ascii")
        head = [STATUS_LINE[status]]
        head += [b"%s: %s\r\n" % pair for pair in self.server_state.default_headers]
        head.append(
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()
