"""The Files and Batch API through the real server, driven by the official openai client:
chat, completions and embeddings batches on the engine and an upstream, failed lines
in the error file, bad input files, unknown files and bad parameters, owner
isolation, cancel, and the files' list, content and delete."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.api.batch_helpers import (
    DONE,
    chat_body,
    jsonl,
    output_lines,
    poll,
    request_line,
)
from tests.conftest import new_key

pytestmark = pytest.mark.model

CHAT = "/v1/chat/completions"
TIMEOUT_S = 180.0


def _upload(oa: openai.OpenAI, data: bytes, name: str = "in.jsonl") -> str:
    made = oa.files.create(file=(name, data, "application/jsonl"), purpose="batch")
    assert made.object == "file" and made.id.startswith("file-")
    assert made.bytes == len(data) and made.filename == name and made.purpose == "batch"
    assert made.status == "processed"
    return made.id


def _run(oa: openai.OpenAI, data: bytes, endpoint: str = CHAT, **kw: Any) -> dict[str, Any]:
    """Upload, create, wait until the batch has ended; its last state."""
    batch = oa.batches.create(
        input_file_id=_upload(oa, data),
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        **kw,
    )
    assert batch.object == "batch" and batch.id.startswith("batch_")
    assert batch.status in ("validating", "in_progress") and batch.endpoint == endpoint
    assert batch.completion_window == "24h" and batch.expires_at
    return _wait(oa, batch.id)


def _wait(oa: openai.OpenAI, batch_id: str, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    return poll(
        lambda: oa.batches.retrieve(batch_id).model_dump(),
        lambda b: b["status"] in DONE,
        timeout_s,
        every_s=0.2,
    )


def _content(oa: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return output_lines(oa.files.content(file_id).content)


def _check_line(line: dict[str, Any], custom_id: str, status: int) -> dict[str, Any]:
    assert line["id"].startswith("batch_req_") and line["custom_id"] == custom_id
    assert line["error"] is None
    assert line["response"]["status_code"] == status and line["response"]["request_id"]
    body: dict[str, Any] = line["response"]["body"]
    return body


def test_a_chat_batch_on_the_engine_and_an_upstream(oa: openai.OpenAI) -> None:
    models = ["up-openai", "smollm2", "up-openai", "smollm2", "up-openai", "smollm2"]
    lines = [
        request_line(f"req-{i}", chat_body(m, f"number {i} say hello", max_tokens=6, temperature=0))
        for i, m in enumerate(models)
    ]
    batch = _run(oa, jsonl(lines), metadata={"job": "contract"})
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 6, "completed": 6, "failed": 0}
    assert batch["metadata"] == {"job": "contract"} and batch["errors"] is None
    assert batch["error_file_id"] is None
    for at in ("in_progress_at", "finalizing_at", "completed_at"):
        assert batch[at] and batch[at] >= batch["created_at"], at
    out = _content(oa, batch["output_file_id"])
    assert [x["custom_id"] for x in out] == [f"req-{i}" for i in range(6)]
    assert len({x["id"] for x in out}) == 6
    for i, (line, model) in enumerate(zip(out, models, strict=True)):
        body = _check_line(line, f"req-{i}", 200)
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl")
        assert body["model"] == model
        choice = body["choices"][0]
        assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
        assert choice["finish_reason"] in ("stop", "length")
        assert 0 < body["usage"]["completion_tokens"] <= 6
        if model == "up-openai":  # the double echoes the prompt, word by word
            assert choice["message"]["content"] == f"number {i} say hello"
    output = oa.files.retrieve(batch["output_file_id"])
    assert output.purpose == "batch_output" and output.bytes > 0


def test_a_failed_line_goes_to_the_error_file(oa: openai.OpenAI) -> None:
    lines = [
        request_line("ok-1", chat_body("up-openai", "one two")),
        request_line("bad", chat_body("no-such-model", "one two")),
        request_line("ok-2", chat_body("up-openai", "three four")),
    ]
    batch = _run(oa, jsonl(lines))
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    out = _content(oa, batch["output_file_id"])
    assert [x["custom_id"] for x in out] == ["ok-1", "ok-2"]
    errors = _content(oa, batch["error_file_id"])
    assert len(errors) == 1
    body = _check_line(errors[0], "bad", 404)
    assert body["error"]["message"] and "no-such-model" in body["error"]["message"]


def test_an_embeddings_batch(oa: openai.OpenAI) -> None:
    url = "/v1/embeddings"
    lines = [
        request_line("e-0", {"model": "minilm", "input": "The cat sat on the mat."}, url),
        request_line("e-1", {"model": "minilm", "input": ["a dog", "a cat"]}, url),
        request_line("e-2", {"model": "up-openai", "input": ["a b", "c d e"]}, url),
    ]
    batch = _run(oa, jsonl(lines), endpoint=url)
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    out = _content(oa, batch["output_file_id"])
    assert [x["custom_id"] for x in out] == ["e-0", "e-1", "e-2"]
    sizes = []
    for i, line in enumerate(out):
        body = _check_line(line, f"e-{i}", 200)
        assert body["object"] == "list" and body["usage"]["prompt_tokens"] > 0
        assert all(d["object"] == "embedding" for d in body["data"])
        sizes.append([len(d["embedding"]) for d in body["data"]])
    assert sizes == [[384], [384, 384], [3, 3]]  # all-MiniLM-L6-v2 is 384 wide
    assert [d["embedding"] for d in out[2]["response"]["body"]["data"]] == [
        [3.0, 2.0, 1.0],
        [5.0, 3.0, 1.0],
    ]


def test_a_completions_batch(oa: openai.OpenAI) -> None:
    url = "/v1/completions"
    lines = [
        request_line("c-0", {"model": "up-openai", "prompt": "alpha beta gamma"}, url),
        request_line(
            "c-1", {"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 5}, url
        ),
    ]
    batch = _run(oa, jsonl(lines), endpoint=url)
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    out = _content(oa, batch["output_file_id"])
    bodies = [_check_line(line, f"c-{i}", 200) for i, line in enumerate(out)]
    assert all(b["object"] == "text_completion" for b in bodies)
    assert bodies[0]["choices"][0]["text"] == "alpha beta gamma"
    assert bodies[1]["choices"][0]["text"] and bodies[1]["usage"]["completion_tokens"] <= 5


GOOD = request_line("good", chat_body("up-openai", "hi"))
BAD_LINES = {
    "not JSON": (b"{not json", "invalid_json_line", None),
    "no custom_id": ({"method": "POST", "url": CHAT, "body": {}}, None, "custom_id"),
    "duplicate custom_id": (GOOD, "duplicate_custom_id", "custom_id"),
    "method not POST": ({**GOOD, "custom_id": "m", "method": "GET"}, None, "method"),
    "url not the endpoint": ({**GOOD, "custom_id": "u", "url": "/v1/embeddings"}, None, "url"),
}


@pytest.mark.parametrize("kind", list(BAD_LINES))
def test_a_bad_input_line_fails_the_batch(oa: openai.OpenAI, kind: str) -> None:
    bad, code, param = BAD_LINES[kind]
    data = jsonl([GOOD]) + (bad if isinstance(bad, bytes) else jsonl([bad]))
    batch = _run(oa, data)
    assert batch["status"] == "failed" and batch["failed_at"], batch
    assert batch["output_file_id"] is None and batch["in_progress_at"] is None
    errors = batch["errors"]
    assert errors["object"] == "list" and len(errors["data"]) == 1, errors
    error = errors["data"][0]
    assert error["line"] == 2 and error["message"] and error["code"], error
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param


def test_every_bad_line_is_listed(oa: openai.OpenAI) -> None:
    data = jsonl([GOOD]) + b"\n".join(
        b if isinstance(b, bytes) else jsonl([b]).strip() for b, _, _ in BAD_LINES.values()
    )
    batch = _run(oa, data)
    assert batch["status"] == "failed", batch
    assert [e["line"] for e in batch["errors"]["data"]] == [2, 3, 4, 5, 6]


def test_unknown_file_and_bad_parameters(oa: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        oa.batches.create(input_file_id="file-doesnotexist", endpoint=CHAT, completion_window="24h")
    file_id = _upload(oa, jsonl([GOOD]))
    with pytest.raises(openai.BadRequestError) as bad:
        oa.batches.create(
            input_file_id=file_id,
            endpoint="/v1/moderations",
            completion_window="24h",
        )
    assert "endpoint" in str(bad.value.body)
    with pytest.raises(openai.BadRequestError) as bad:
        oa.batches.create(
            input_file_id=file_id,
            endpoint=CHAT,
            completion_window="48h",  # type: ignore[arg-type]
        )
    assert "completion_window" in str(bad.value.body)
    with pytest.raises(openai.NotFoundError):
        oa.batches.retrieve("batch_doesnotexist")
    with pytest.raises(openai.NotFoundError):
        oa.files.retrieve("file-doesnotexist")
    with pytest.raises(openai.BadRequestError):
        oa.files.create(file=("x.jsonl", b"{}\n", "application/jsonl"), purpose="fine-tune")


def test_another_key_sees_nothing(oa: openai.OpenAI, stack: dict[str, Any]) -> None:
    batch = _run(oa, jsonl([GOOD]))
    assert batch["status"] == "completed", batch
    other = openai.OpenAI(
        base_url=f"{stack['base']}/v1", api_key=new_key(stack, "mallory"), max_retries=0
    )
    mine = batch["input_file_id"]
    for call in (
        lambda: other.files.retrieve(mine),
        lambda: other.files.content(mine),
        lambda: other.files.retrieve(batch["output_file_id"]),
        lambda: other.files.content(batch["output_file_id"]),
        lambda: other.files.delete(mine),
        lambda: other.batches.retrieve(batch["id"]),
        lambda: other.batches.cancel(batch["id"]),
        lambda: other.batches.create(input_file_id=mine, endpoint=CHAT, completion_window="24h"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert mine not in [f.id for f in other.files.list()]
    assert batch["id"] not in [b.id for b in other.batches.list()]
    # The other key's own things are its own, and the first key's stay whole.
    theirs = _run(other, jsonl([GOOD]))
    assert theirs["status"] == "completed", theirs
    with pytest.raises(openai.NotFoundError):
        oa.batches.retrieve(theirs["id"])
    assert oa.files.retrieve(mine).id == mine


def test_cancel_a_slow_batch(oa: openai.OpenAI) -> None:
    n = 60
    lines = [
        request_line(
            f"slow-{i}",
            chat_body("smollm2", f"{i}: write a long story about a fox.", max_tokens=64),
        )
        for i in range(n)
    ]
    made = oa.batches.create(
        input_file_id=_upload(oa, jsonl(lines)), endpoint=CHAT, completion_window="24h"
    )
    started = poll(
        lambda: oa.batches.retrieve(made.id).model_dump(),
        lambda b: b["request_counts"]["completed"] >= 1 or b["status"] in DONE,
        TIMEOUT_S,
        every_s=0.1,
    )
    assert started["status"] == "in_progress", started
    assert started["request_counts"]["total"] == n
    cancelling = oa.batches.cancel(made.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    batch = _wait(oa, made.id, timeout_s=60)
    assert batch["status"] == "cancelled", batch
    assert batch["cancelled_at"] and batch["completed_at"] is None, batch
    counts = batch["request_counts"]
    assert counts["total"] == n and 1 <= counts["completed"] < n and counts["failed"] == 0
    out = _content(oa, batch["output_file_id"])
    assert len(out) == counts["completed"]
    ids = [x["custom_id"] for x in out]
    assert len(set(ids)) == len(ids) and ids == sorted(ids, key=lambda c: int(c.split("-")[1]))
    assert all(x["response"]["status_code"] == 200 for x in out)
    # Cancelling again says the same; an ended batch cannot be cancelled.
    assert oa.batches.cancel(made.id).status == "cancelled"
    done = _run(oa, jsonl([GOOD]))
    with pytest.raises(openai.ConflictError):
        oa.batches.cancel(done["id"])
    # The cancel's time stays on the batch once it has ended.
    assert batch["cancelling_at"] == cancelling.cancelling_at, batch


def test_batches_list_newest_first(oa: openai.OpenAI) -> None:
    first = _run(oa, jsonl([GOOD]))
    second = _run(oa, jsonl([GOOD]))
    listed = [b.id for b in oa.batches.list(limit=2).data]
    assert listed == [second["id"], first["id"]]
    page = oa.batches.list(limit=1)
    assert page.has_more and [b.id for b in page.data] == [second["id"]]
    assert [b.id for b in oa.batches.list(limit=1, after=second["id"]).data] == [first["id"]]


def test_files_list_content_and_delete(oa: openai.OpenAI) -> None:
    data = jsonl([GOOD])
    a, b = _upload(oa, data, "a.jsonl"), _upload(oa, data, "b.jsonl")
    page = oa.files.list(limit=2)
    assert [f.id for f in page.data] == [b, a] and page.object == "list"
    assert all(f.purpose == "batch" for f in oa.files.list(purpose="batch"))
    got = oa.files.retrieve(a)
    assert got.id == a and got.filename == "a.jsonl" and got.bytes == len(data)
    assert oa.files.content(a).content == data
    gone = oa.files.delete(a)
    assert gone.id == a and gone.deleted is True and gone.object == "file"
    with pytest.raises(openai.NotFoundError):
        oa.files.retrieve(a)
    with pytest.raises(openai.NotFoundError):
        oa.files.content(a)
    with pytest.raises(openai.NotFoundError):
        oa.files.delete(a)
    assert a not in [f.id for f in oa.files.list(limit=100)]
    assert b in [f.id for f in oa.files.list(limit=100)]


def test_a_small_batch_does_not_wait_behind_a_long_one(oa: openai.OpenAI) -> None:
    slow = [
        request_line(f"s-{i}", chat_body("smollm2", f"{i}: tell a long tale.", max_tokens=64))
        for i in range(40)
    ]
    long_one = oa.batches.create(
        input_file_id=_upload(oa, jsonl(slow)), endpoint=CHAT, completion_window="24h"
    )
    try:
        small = _run(oa, jsonl([GOOD]))  # validated, run and finished meanwhile
        assert small["status"] == "completed" and small["request_counts"]["completed"] == 1
        bad = _run(oa, b"\n" + jsonl([GOOD]) + b"\n{nope\n")
        # blank, GOOD, blank (jsonl ends its lines), then the bad one: line 4 of the file
        assert bad["status"] == "failed" and bad["errors"]["data"][0]["line"] == 4
        assert oa.batches.retrieve(long_one.id).status == "in_progress"
    finally:
        oa.batches.cancel(long_one.id)
        _wait(oa, long_one.id, timeout_s=60)


def test_files_list_in_either_order(oa: openai.OpenAI) -> None:
    first, second = _upload(oa, jsonl([GOOD]), "one.jsonl"), _upload(oa, jsonl([GOOD]), "two.jsonl")
    newest = [f.id for f in oa.files.list(purpose="batch", order="desc", limit=100)]
    oldest = [f.id for f in oa.files.list(purpose="batch", order="asc", limit=100)]
    assert newest.index(second) < newest.index(first) and oldest.index(first) < oldest.index(second)
