"""A fast OpenAI-shaped mock upstream for the overhead benchmark (plain asyncio + uvloop).

POST /v1/chat/completions answers at once: a fixed completion, or, with
"stream": true, 20 server-sent chunks and [DONE]. GET /v1/models lists "m".
HTTP/1.1 keep-alive; just enough HTTP for wrk, aiohttp, httpx and LiteLLM.

    python bench/mock_upstream.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import orjson

CHUNKS = 20
_BODY = orjson.dumps(
    {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello from the mock upstream"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
    }
)
_MODELS = orjson.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]})


def _event(payload: dict[str, object]) -> bytes:
    data = b"data: " + orjson.dumps(payload) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _stream_body() -> bytes:
    base = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    parts = []
    for i in range(CHUNKS):
        delta = {"content": f"t{i} "}
        parts.append(
            _event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        )
    parts.append(_event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    usage = {"prompt_tokens": 5, "completion_tokens": CHUNKS, "total_tokens": 5 + CHUNKS}
    parts.append(_event({**base, "choices": [], "usage": usage}))
    done = b"data: [DONE]\n\n"
    parts.append(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
    return b"".join(parts)


def _response(body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type + b"\r\ncontent-length: "
        + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


PLAIN = _response(_BODY)
MODELS = _response(_MODELS)
STREAM = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    + _stream_body()
)


class Mock(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15 :].split(b"\r\n", 1)[0])
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            assert self.transport is not None
            if head.startswith(b"get"):
                self.transport.write(MODELS)
            elif b'"stream":true' in body.replace(b" ", b""):
                self.transport.write(STREAM)
            else:
                self.transport.write(PLAIN)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Mock, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(int(sys.argv[1])))
