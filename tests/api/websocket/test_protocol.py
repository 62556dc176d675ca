"""The WebSocket endpoint's client messages: what parses, and what each bad one is told."""

from __future__ import annotations

import msgspec
import pytest

from llm_gateway.api.websocket import protocol
from llm_gateway.errors import InvalidRequest

DECODER = protocol.decoder()


def test_a_request_keeps_its_body_as_the_bytes_sent() -> None:
    message = protocol.parse(
        b'{"type":"request","id":"r1","protocol":"openai.chat","body":{"model": "m"}}', DECODER
    )
    assert isinstance(message, protocol.Request)
    assert (message.id, message.protocol) == ("r1", "openai.chat")
    assert bytes(message.body) == b'{"model": "m"}'


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"type": "cancel", "id": "r1"}', protocol.Cancel(id="r1")),
        ('{"type": "auth", "token": "k"}', protocol.Auth(token="k")),
        (b'{"id": "r1", "type": "cancel", "extra": 1}', protocol.Cancel(id="r1")),
    ],
    ids=["cancel", "auth", "unknown fields ignored"],
)
def test_messages_that_parse(data: str | bytes, expected: protocol.Message) -> None:
    assert protocol.parse(data, DECODER) == expected


BAD = [
    ("not JSON", "{nope", None, None, "not valid JSON"),
    ("not an object", "[1, 2]", None, None, "must be a JSON object"),
    ("a string", '"request"', None, None, "must be a JSON object"),
    ("no type", '{"id": "r1"}', "r1", "type", "no 'type'"),
    ("unknown type", '{"type": "zap", "id": "r2"}', "r2", "type", "unknown message type 'zap'"),
    ("type not a string", '{"type": 3}', None, "type", "unknown message type 3"),
    ("no id", '{"type": "cancel"}', None, "id", "missing required field `id`"),
    ("id not a string", '{"type": "cancel", "id": 7}', None, "id", "Expected `str`"),
    ("empty id", '{"type": "cancel", "id": ""}', None, "id", "1 to 128 characters"),
    ("long id", '{"type": "cancel", "id": "%s"}' % ("x" * 129), None, "id", "1 to 128"),
    (
        "no body",
        '{"type": "request", "id": "r3", "protocol": "openai.chat"}',
        "r3",
        "body",
        "missing required field `body`",
    ),
    (
        "no protocol",
        '{"type": "request", "id": "r4", "body": {}}',
        "r4",
        "protocol",
        "missing required field `protocol`",
    ),
    ("auth without token", '{"type": "auth"}', None, "token", "`token`"),
]


@pytest.mark.parametrize(("case", "data", "rid", "param", "says"), BAD, ids=[b[0] for b in BAD])
def test_bad_messages_say_what_is_wrong(
    case: str, data: str, rid: str | None, param: str | None, says: str
) -> None:
    with pytest.raises(protocol.BadMessage) as caught:
        protocol.parse(data, DECODER)
    err = caught.value
    assert isinstance(err, InvalidRequest) and err.status == 400
    assert (err.id, err.param) == (rid, param)
    assert says in err.message


def test_replies_are_tagged_with_the_request_id() -> None:
    assert protocol.event("a", None, {"x": 1}) == {"type": "event", "id": "a", "data": {"x": 1}}
    named = protocol.event("a", "response.created", {})
    assert named == {"type": "event", "id": "a", "event": "response.created", "data": {}}
    assert protocol.done("a") == {"type": "done", "id": "a"}
    assert protocol.cancelled("a") == {"type": "cancelled", "id": "a"}
    err = InvalidRequest("bad")
    reply = protocol.error("a", {"error": "bad"}, err)
    assert reply == {"type": "error", "id": "a", "status": 400, "error": {"error": "bad"}}
    assert msgspec.json.decode(msgspec.json.encode(reply)) == reply
