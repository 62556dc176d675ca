"""A batch's input file checked line by line, each problem named with its line."""

from __future__ import annotations

import json

from llm_gateway.api.openai.batch.lines import parse_lines

CHAT = "/v1/chat/completions"


def _line(custom_id: str, **over: object) -> bytes:
    line = {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": {"model": "m"}}
    return json.dumps({**line, **over}).encode()


def test_good_lines_keep_their_order_and_bodies() -> None:
    data = b"\n".join([_line("a"), b"", _line("b")]) + b"\n"
    lines, errors = parse_lines(data, CHAT)
    # Lines are the file's: the blank one counts.
    assert errors == [] and [(x.index, x.custom_id) for x in lines] == [(0, "a"), (2, "b")]
    assert json.loads(lines[1].body) == {"model": "m"}


def test_every_kind_of_bad_line_is_named() -> None:
    data = b"\n".join(
        [
            _line("a"),
            b"{not json",
            json.dumps({"method": "POST", "url": CHAT, "body": {}}).encode(),
            _line("a"),
            _line("c", method="GET"),
            _line("d", url="/v1/embeddings"),
            _line("e", body="text"),
            b"[1, 2]",
        ]
    )
    lines, errors = parse_lines(data, CHAT)
    assert [x.custom_id for x in lines] == ["a"]
    assert [(e.line, e.code) for e in errors] == [
        (2, "invalid_json_line"),
        (3, "missing_required_parameter"),
        (4, "duplicate_custom_id"),
        (5, "invalid_method"),
        (6, "mismatched_endpoint"),
        (7, "invalid_request"),
        (8, "invalid_request"),
    ]
    assert errors[3].as_json()["param"] == "method"


def test_an_empty_file_is_an_error() -> None:
    assert parse_lines(b"\n\n", CHAT)[1][0].code == "empty_file"
