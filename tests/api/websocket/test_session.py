"""The WebSocket endpoint in process (the dummy engine): what a connection needs with
authentication off, and the limits one message and one connection meet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from llm_gateway import Settings, create_app
from tests.conftest import ADMIN_KEY

CHAT = {"model": "dummy", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def ask(ws: Any, rid: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    ws.send_text(
        json.dumps({"type": "request", "id": rid, "protocol": "openai.chat", "body": body})
    )
    out = []
    while not out or out[-1]["type"] == "event":
        out.append(ws.receive_json())
    return out


def test_with_auth_off_no_credentials_are_asked_for(tmp_path: Path) -> None:
    settings = Settings(engine_dummy=True, data_dir=tmp_path, auth=False)
    with TestClient(create_app(settings)) as client, client.websocket_connect("/v1/ws") as ws:
        ws.send_text(json.dumps({"type": "auth", "token": "ignored"}))  # ignored: no error
        messages = ask(ws, "a", CHAT)
    assert messages[-1] == {"type": "done", "id": "a"}
    assert messages[0]["data"]["choices"][0]["delta"]["role"] == "assistant"


def test_a_message_over_the_body_limit_is_413_and_the_connection_goes_on(tmp_path: Path) -> None:
    settings = Settings(
        engine_dummy=True, data_dir=tmp_path, max_body_bytes=4096, admin_key=ADMIN_KEY
    )
    headers = {"x-api-key": ADMIN_KEY}
    app = TestClient(create_app(settings))
    with app as client, client.websocket_connect("/v1/ws", headers=headers) as ws:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
        error = ask(ws, "big", big)[-1]
        assert (error["type"], error["id"], error["status"]) == ("error", None, 413)
        assert error["error"]["error"]["code"] == "payload_too_large"
        assert ask(ws, "small", CHAT)[-1]["type"] == "done"
