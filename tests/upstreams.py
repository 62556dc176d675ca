"""Small OpenAI-, Ollama- and Anthropic-shaped upstream servers for tests, able to fail on cue.

Each runs a real aiohttp server on 127.0.0.1 in its own thread. It answers by
echoing the last user message one word per chunk (so tests know the text), or,
asked for JSON under a schema, with one value that fits it (strings filled with
that text),
and obeys a ``Cue``: fail the next requests with given statuses, die after N
chunks, wait before answering, or misbehave (``fault``: reset the connection,
answer bytes that are no HTTP, or a 200 whose body is cut short). It records
every request it saw and whether a stream was cut off by the client. The
Anthropic side is in tests/upstream_anthropic.py.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web

from tests import upstream_anthropic

Kind = Literal["openai", "ollama", "anthropic"]


@dataclass
class Cue:
    fail: list[int] = field(default_factory=list)  # statuses for the next requests
    die_after: int | None = None  # drop the connection after this many chunks
    delay_s: float = 0.0  # before the first byte
    chunk_delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    cancelled: int = 0  # streams the client cut off
    fault: Literal["reset", "garbage", "truncated"] | None = None  # every request, once set


def _words(body: dict[str, Any]) -> list[str]:
    if "messages" in body:
        users = [m["content"] for m in body["messages"] if m["role"] == "user"]
        text = users[-1] if users else ""
        if isinstance(text, list):  # content parts
            text = " ".join(p.get("text", "") for p in text)
    else:
        text = body.get("prompt", "")
    return text.split() or ["ok"]


def _example(schema: dict[str, Any], text: str) -> Any:
    """A value that fits a simple JSON schema, strings filled with text."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: _example(v, text) for k, v in props.items()}
    return {"string": text, "boolean": True, "integer": 1, "number": 1.5}.get(kind, [])


def _reply(body: dict[str, Any]) -> list[str]:
    """The answer's pieces: JSON fitting the schema when one is asked for, else the words."""
    rf = body.get("response_format") or {}
    schema = (rf.get("json_schema") or {}).get("schema")
    if isinstance(body.get("format"), dict):
        schema = body["format"]
    if schema is None:
        return _words(body)
    return [orjson.dumps(_example(schema, " ".join(_words(body)))).decode()]


def _tool_call(body: dict[str, Any]) -> tuple[str, str]:
    """(the first tool's name, arguments echoing the prompt as JSON text)."""
    name = body["tools"][0]["function"]["name"]
    return name, orjson.dumps({"text": " ".join(_words(body))}).decode()


class _Server:
    def __init__(self, kind: Kind, cue: Cue) -> None:
        self.kind = kind
        self.cue = cue
        self.app = web.Application()
        if kind == "openai":
            self.app.router.add_post("/v1/chat/completions", self.openai)
            self.app.router.add_post("/v1/completions", self.openai)
            self.app.router.add_get("/v1/models", self.models)
            self.app.router.add_post("/v1/embeddings", self.embed)
        elif kind == "anthropic":
            self.app.router.add_post("/v1/messages", self.anthropic)
            self.app.router.add_post("/v1/messages/count_tokens", self.anthropic_count)
            self.app.router.add_get("/v1/models", self.models)
        else:
            self.app.router.add_post("/api/chat", self.ollama)
            self.app.router.add_post("/api/generate", self.ollama)
            self.app.router.add_get("/api/tags", self.models)
            self.app.router.add_post("/api/embed", self.embed)

    async def embed(self, request: web.Request) -> web.Response:
        """A vector [characters, words, 1] per input; 2 tokens an input."""
        body, failure = await self._begin(request)
        if failure is not None:
            return failure
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = [[float(len(str(x))), float(len(str(x).split())), 1.0] for x in inputs]
        if self.kind == "ollama":
            return web.json_response(
                {
                    "model": body["model"],
                    "embeddings": vectors,
                    "prompt_eval_count": 2 * len(inputs),
                }
            )
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        usage = {"prompt_tokens": 2 * len(inputs), "total_tokens": 2 * len(inputs)}
        return web.json_response({"object": "list", "data": data[::-1], "usage": usage})

    async def anthropic(self, request: web.Request) -> web.StreamResponse:
        return await upstream_anthropic.messages(request, self._begin, self._stream)

    async def anthropic_count(self, request: web.Request) -> web.Response:
        return await upstream_anthropic.count_tokens(request, self._begin)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [], "models": []})

    async def _begin(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        body = await request.json()
        self.cue.requests.append({"path": request.path, "body": body, **dict(request.headers)})
        if self.cue.fail:
            status = self.cue.fail.pop(0)
            err = {"error": {"message": f"cued failure {status}"}}
            return body, web.json_response(err, status=status)
        if self.cue.delay_s:
            await asyncio.sleep(self.cue.delay_s)
        if self.cue.fault is not None:
            _misbehave(request, body, self.cue.fault)
            return body, web.Response(status=500)  # never reaches the client: it is gone
        return body, None

    async def _stream(
        self, request: web.Request, pieces: list[bytes], content_type: str
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        try:
            for i, piece in enumerate(pieces):
                if self.cue.die_after is not None and i >= self.cue.die_after:
                    assert request.transport is not None
                    request.transport.close()  # mid-stream death
                    return resp
                await resp.write(piece)
                if self.cue.chunk_delay_s:
                    await asyncio.sleep(self.cue.chunk_delay_s)
        except (ConnectionResetError, asyncio.CancelledError):
            self.cue.cancelled += 1
            raise
        await resp.write_eof()
        return resp

    async def openai(self, request: web.Request) -> web.StreamResponse:
        body, failure = await self._begin(request)
        if failure is not None:
            return failure
        if body.get("tools"):
            return await self._openai_tool_call(request, body)
        words = _reply(body)[: body.get("max_tokens") or 10**6]
        chat = request.path.endswith("chat/completions")
        events = []
        for i, w in enumerate(words):
            text = w if i == 0 else " " + w
            choice = (
                {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
            )
            events.append({"choices": [{**choice, "finish_reason": None}]})
        last = {"index": 0, "delta": {}} if chat else {"index": 0, "text": ""}
        events.append({"choices": [{**last, "finish_reason": "stop"}]})
        usage = {
            "prompt_tokens": 7,
            "completion_tokens": len(words),
            "total_tokens": 7 + len(words),
        }
        if body.get("stream") is False:
            text = " ".join(words)
            part = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            choice = {"index": 0, **part, "finish_reason": "stop"}
            return web.json_response({"choices": [choice], "usage": usage})
        events.append({"choices": [], "usage": usage})
        pieces = [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
        return await self._stream(request, pieces, "text/event-stream")

    async def _openai_tool_call(
        self, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        name, args = _tool_call(body)
        usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        call = {"id": "call_up1", "type": "function", "function": {"name": name, "arguments": args}}
        if body.get("stream") is False:
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
            return web.json_response({"choices": [choice], "usage": usage})
        head = {**call, "index": 0, "function": {"name": name, "arguments": ""}}
        deltas = [
            {"role": "assistant", "content": None, "tool_calls": [head]},
            {"tool_calls": [{"index": 0, "function": {"arguments": args[:5]}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": args[5:]}}]},
        ]
        events = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
        events.append({"choices": [], "usage": usage})
        pieces = [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
        return await self._stream(request, pieces, "text/event-stream")

    async def ollama(self, request: web.Request) -> web.StreamResponse:
        body, failure = await self._begin(request)
        if failure is not None:
            return failure
        if body.get("tools"):
            name, args = _tool_call(body)
            call = {"function": {"name": name, "arguments": orjson.loads(args)}}
            message = {"role": "assistant", "content": "", "tool_calls": [call]}
            final = {"model": body["model"], "done": True, "done_reason": "stop"}
            final.update({"prompt_eval_count": 5, "eval_count": 3})
            if body.get("stream") is False:
                return web.json_response({**final, "message": message})
            lines = [{"model": body["model"], "message": message, "done": False}, final]
            final["message"] = {"role": "assistant", "content": ""}
            pieces = [orjson.dumps(line) + b"\n" for line in lines]
            return await self._stream(request, pieces, "application/x-ndjson")
        limit = (body.get("options") or {}).get("num_predict") or 10**6
        words = _reply(body)[:limit]
        chat = request.path == "/api/chat"
        lines = []
        for i, w in enumerate(words):
            text = w if i == 0 else " " + w
            part = (
                {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
            )
            lines.append({"model": body["model"], **part, "done": False})
        end = {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
        final = {
            "model": body["model"],
            **end,
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 5,
            "eval_count": len(words),
        }
        if body.get("stream") is False:
            text = " ".join(words)
            whole = (
                {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
            )
            return web.json_response({**final, **whole})
        lines.append(final)
        pieces = [orjson.dumps(line) + b"\n" for line in lines]
        return await self._stream(request, pieces, "application/x-ndjson")


def _misbehave(request: web.Request, body: dict[str, Any], fault: str) -> None:
    """Write a broken answer straight to the socket and close it: nothing (a reset),
    bytes that are no HTTP, or a 200 cut short (JSON promising 400 bytes, or a
    stream's first event and no end)."""
    transport = request.transport
    assert transport is not None
    if fault == "garbage":
        transport.write(b"\x00\x17garbage, not HTTP at all\r\n\r\n")
    elif fault == "truncated" and body.get("stream"):
        event = {"choices": [{"index": 0, "delta": {"content": "cut"}, "finish_reason": None}]}
        chunk = b"data: " + orjson.dumps(event) + b"\n\n"
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        head += b"Transfer-Encoding: chunked\r\n\r\n"
        transport.write(head + b"%x\r\n" % len(chunk) + chunk + b"\r\n")
    elif fault == "truncated":
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        head += b"Content-Length: 400\r\n\r\n"
        transport.write(head + b'{"choices": [{"index": 0, "mess')
    else:  # reset: an RST rather than a FIN
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def upstream(
    kind: Kind, cue: Cue | None = None, tls: ssl.SSLContext | None = None
) -> Iterator[tuple[str, Cue]]:
    """A running upstream: (base URL as the models file wants it, its cue); https with ``tls``."""
    cue = cue or Cue()
    server = _Server(kind, cue)
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(server.app, handle_signals=False)
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10), "upstream did not start"
    scheme = "https" if tls else "http"
    base = f"{scheme}://127.0.0.1:{port}" + ("" if kind == "ollama" else "/v1")
    try:
        yield base, cue
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        time.sleep(0)
