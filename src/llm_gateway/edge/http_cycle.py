"""The response path of uvicorn's httptools protocol, made leaner (GatewayCycle).

Three changes to how a response goes out, each measured on the overhead bench:

* The status line and headers wait for the first body message and leave in
  one write with it, as the ASGI spec asks ("the server must not start
  sending the response to the client until it has received at least one
  response body event"). uvicorn writes them at once: two writes, two TCP
  segments and two wake-ups of the client for every whole answer.
* Body messages sent in one turn of the event loop leave in one write: the
  first at once, the ones after it at the end of the turn (or when 64 KiB are
  held). A stream whose upstream delivered many events in one read went out as
  one write per event, each a system call and a wake-up of the client; an
  event that arrives on its own still leaves at once, and what is held when
  the app fails still goes out before the connection closes.
* Header names and values are checked for the bytes uvicorn refuses once for
  the whole set (two translate() calls) instead of two regular-expression
  searches per header.

A client that reads nothing for ``send_timeout`` is cut off (see ``_drain``),
and an app that fails while the head is still held gets uvicorn's 500. The
rest is uvicorn's RequestResponseCycle; edge.http_server runs it.
"""

from __future__ import annotations

import asyncio
import operator
from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    RequestResponseCycle,
)

HOLD_MAX = 1 << 16
"""Body bytes held for the end of the loop's turn beyond this are written at once."""
_NAME = operator.itemgetter(0)
_VALUE = operator.itemgetter(1)
# The bytes uvicorn's HEADER_RE and HEADER_VALUE_RE refuse, as translate() tables:
# deleting every allowed byte leaves the refused ones (a C loop; the regular
# expressions cost 1.8 us a response, this 0.5).
_NAME_OK = bytes(b for b in range(256) if not HEADER_RE.match(bytes([b])))
_VALUE_OK = bytes(b for b in range(256) if not HEADER_VALUE_RE.match(bytes([b])))


class GatewayCycle(RequestResponseCycle):
    """One request and its response; the response head is held for the first body."""

    head: bytes = b""
    loop: asyncio.AbstractEventLoop
    send_timeout: float = 60.0  # set for each cycle from ConnectionLimits
    _turn: asyncio.Handle | None = None  # a write happened this turn; ends it
    _held: list[bytes] | None = None  # body written since, for the turn's end
    _held_bytes = 0

    async def send(self, message: Any) -> None:  # uvicorn's ASGISendEvent
        if self.flow.write_paused and not self.disconnected:
            await self._drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
                )
            # A bad header raises before the response counts as started: the app's
            # failure is answered with a 500 rather than a dropped connection.
            self.head = self._head(message["status"], message.get("headers", ()))
            self.response_started = True
            self.waiting_for_100_continue = False
        elif not self.response_complete:
            if message["type"] != "http.response.body":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.body', but got '{message['type']}'."
                )
            self._body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, "
                "after response already completed."
            )

    def _head(self, status: int, app_headers: Any) -> bytes:
        headers = [*self.default_headers, *app_headers]
        names = list(map(_NAME, headers))  # C loops, not Python ones: ~10 headers a response
        joined = b"".join(names)
        if joined.translate(None, _NAME_OK):
            raise RuntimeError("Invalid HTTP header name.")
        if b"\t".join(map(_VALUE, headers)).translate(None, _VALUE_OK):
            raise RuntimeError("Invalid HTTP header value.")
        if not joined.islower():  # ASGI asks for lower-case names; uvicorn lowers them
            headers = [(n.lower(), v) for n, v in headers]
            names = list(map(_NAME, headers))
        # uvicorn's framing rules, for the three names that carry them: the first
        # content-length counts, unless a transfer-encoding says chunked.
        if b"content-length" in names and self.chunked_encoding is None:
            self.expected_content_length = int(headers[names.index(b"content-length")][1])
            self.chunked_encoding = False
        has_connection_close = False
        if b"transfer-encoding" in names or b"connection" in names:
            for name, value in headers:
                if name == b"transfer-encoding":
                    if value.lower() == b"chunked":
                        self.expected_content_length = 0
                        self.chunked_encoding = True
                elif name == b"connection" and b"close" in [
                    t.lower().strip() for t in value.split(b",")
                ]:
                    self.keep_alive = False
                    has_connection_close = True
        content = [STATUS_LINE[status]]
        if headers:
            content += (b"\r\n".join(map(b": ".join, headers)), b"\r\n")
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if (
            self.chunked_encoding is None
            and self.scope["method"] != "HEAD"
            and status not in (204, 304)
        ):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        return b"".join(content)

    def _body(self, body: bytes, more_body: bool) -> None:
        head, self.head = self.head, b""
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
            out = head
        elif self.chunked_encoding:
            parts = [head]
            if body:
                parts += (b"%x\r\n" % len(body), body, b"\r\n")
            if not more_body:
                parts.append(b"0\r\n\r\n")
            out = b"".join(parts)
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            out = head + body if head else body
        if out:
            self._write(out, more_body)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    async def run_asgi(self, app: Any) -> None:
        """uvicorn's own, except that what the app sent before it failed or stopped
        short is written before the connection is closed (it may still be held), and
        a failure while the head is still held gets the 500 in its place."""
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            if self._unsend():
                await self.send_500_response()
            else:
                self._close()
        else:
            if result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
                self._close()
            elif not self.response_started and not self.disconnected:
                self.logger.error("ASGI callable returned without starting response.")
                await self.send_500_response()
            elif not self.response_complete and not self.disconnected:
                self.logger.error("ASGI callable returned without completing response.")
                self._close()
        finally:
            self.on_response = lambda: None

    def _unsend(self) -> bool:
        """Whether nothing of the response went out; a held head is dropped, so
        that uvicorn's 500 can take its place."""
        if self.head:
            self.head = b""
            self.response_started = False
            self.chunked_encoding = None
            self.expected_content_length = 0
        return not self.response_started

    async def _drain(self) -> None:
        """Wait for the client to take what is buffered; one that takes nothing for
        send_timeout seconds is cut off, and connection_lost tells the app (its
        http.disconnect cancels the generation). abort(), not close(): close would
        wait to flush the very buffer the client does not read."""
        try:
            async with asyncio.timeout(self.send_timeout):
                await self.flow.drain()
        except TimeoutError:
            self.logger.warning("client read nothing for %g s; disconnecting", self.send_timeout)
            self.disconnected = True
            self.transport.abort()

    def _close(self) -> None:
        self._release()
        self.transport.close()

    def _write(self, out: bytes, more_body: bool) -> None:
        """Write now, or hold until the end of this turn of the loop when something
        went out in it already; the last body message takes what is held with it."""
        held = self._held
        if held is not None:
            held.append(out)
            self._held_bytes += len(out)
            if not more_body or self._held_bytes > HOLD_MAX:
                self._release()
        elif self._turn is None or not more_body:
            self.transport.write(out)
            if more_body:
                self._turn = self.loop.call_soon(self._end_turn)
        else:
            self._held = [out]
            self._held_bytes = len(out)

    def _release(self) -> None:
        held, self._held, self._held_bytes = self._held, None, 0
        if held and not self.disconnected:
            self.transport.write(b"".join(held))

    def _end_turn(self) -> None:
        self._turn = None
        self._release()
