"""Endpoint behaviour in process, against the deterministic dummy backend."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from starlette.testclient import TestClient

from llm_gateway import Settings
from tests.conftest import ADMIN_KEY, admin_client

CHAT = {"model": "dummy", "messages": [{"role": "user", "content": "one two three four"}]}


def sse_events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]


def test_probes_and_info(client: TestClient) -> None:
    assert client.get("/live").json() == {"status": "alive"}
    assert client.get("/ready").status_code == 200
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["models"]["dummy"]["status"] == "ok"
    info = client.get("/").json()
    assert info["name"] == "llm-gateway" and "dummy" in [m["name"] for m in info["models"]]
    assert client.head("/").status_code == 200


def test_openai_chat_non_streaming(client: TestClient) -> None:
    body = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2}).json()
    assert body["choices"][0]["message"]["content"] == "one two"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


def test_openai_chat_streaming_with_usage(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "one two three four"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert all(c["usage"] is None for c in chunks[:-1])


def test_openai_completions_stop_string(client: TestClient) -> None:
    body = client.post(
        "/v1/completions", json={"model": "dummy", "prompt": "a b c d", "stop": [" c"]}
    ).json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "a b"
    assert body["choices"][0]["finish_reason"] == "stop"


def test_openai_errors_have_openai_shape(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and err["param"] == "model" and "nope" in err["message"]
    r = client.post("/v1/chat/completions", content=b"{bad json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json={**CHAT, "top_p": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_p"


def test_body_over_limit_is_413_in_each_protocol(client: TestClient) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 10_000}]}
    r = client.post("/v1/chat/completions", json=big)
    assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]
    r = client.post("/api/chat", json=big)
    assert r.status_code == 413 and "larger than" in r.json()["error"]


def test_backend_failure_before_first_byte_is_a_real_status(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, "model": "dummy-error", "stream": True})
    assert r.status_code == 500 and "on purpose" in r.json()["error"]["message"]
    r = client.post("/api/chat", json={**CHAT, "model": "dummy-error"})
    assert r.status_code == 500 and "on purpose" in r.json()["error"]


def test_failure_mid_stream_is_one_in_band_event(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions", json={**CHAT, "model": "dummy-midstream", "stream": True}
    )
    assert r.status_code == 200
    events = sse_events(r.text)
    assert "[DONE]" not in events
    assert "mid-stream" in orjson.loads(events[-1])["error"]["message"]
    r = client.post("/api/generate", json={"model": "dummy-midstream", "prompt": "a b c d"})
    lines = [orjson.loads(x) for x in r.text.splitlines()]
    assert "mid-stream" in lines[-1]["error"] and not any(x.get("done") for x in lines)


def test_ollama_generate_streams_ndjson_by_default(client: TestClient) -> None:
    r = client.post("/api/generate", json={"model": "dummy", "prompt": "a b c"})
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = [orjson.loads(x) for x in r.text.splitlines()]
    assert "".join(x["response"] for x in lines) == "a b c"
    last = lines[-1]
    assert last["done"] is True and last["done_reason"] == "stop" and last["eval_count"] == 3
    for key in (
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_duration",
    ):
        assert isinstance(last[key], int)


def test_ollama_chat_non_streaming(client: TestClient) -> None:
    r = client.post("/api/chat", json={**CHAT, "stream": False, "options": {"num_predict": 3}})
    body = r.json()
    assert body["message"] == {"role": "assistant", "content": "one two three"}
    assert body["done_reason"] == "length" and body["eval_count"] == 3


def test_ollama_errors_have_ollama_shape(client: TestClient) -> None:
    r = client.post("/api/generate", json={"model": "nope", "prompt": "x"})
    assert r.status_code == 404 and r.json() == {"error": "model 'nope' not found"}
    r = client.post("/api/generate", json={"model": "dummy", "prompt": "x", "options": 5})
    assert r.status_code == 400 and "options" in r.json()["error"]
    r = client.get("/api/nowhere")
    assert r.status_code == 404 and "no route" in r.json()["error"]


def test_empty_prompt_only_loads_the_model(client: TestClient) -> None:
    body = client.post("/api/generate", json={"model": "dummy"}).json()
    assert body["done"] is True and body["done_reason"] == "load"


def test_model_lists_agree(client: TestClient) -> None:
    names = {m["id"] for m in client.get("/v1/models").json()["data"]}
    tags = {m["name"] for m in client.get("/api/tags").json()["models"]}
    seed_alias = {m["name"] for m in client.get("/api/models").json()["models"]}
    assert names == tags == seed_alias and "dummy" in names
    assert client.get("/v1/models/dummy").json()["id"] == "dummy"
    assert client.get("/v1/models/nope").status_code == 404
    assert {m["name"] for m in client.get("/api/ps").json()["models"]} == names
    show = client.post("/api/show", json={"model": "dummy:latest"}).json()
    assert show["details"]["family"] == "dummy"
    assert "version" in client.get("/api/version").json()


def test_ready_turns_503_while_draining(client: TestClient) -> None:
    assert client.get("/ready").status_code == 200
    client.app.state.gateway.draining = True  # type: ignore[attr-defined]
    r = client.get("/ready")
    assert r.status_code == 503 and r.json() == {"status": "draining"}
    assert client.get("/live").status_code == 200


def test_model_that_fails_to_load_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(
        "models:\n  - {name: broken, path: missing.gguf}\n  - {name: dummy, backend: dummy}\n"
    )
    with admin_client(Settings(config=config, data_dir=tmp_path, admin_key=ADMIN_KEY)) as c:
        deadline = time.monotonic() + 10
        while c.get("/health").json()["models"]["broken"]["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        health = c.get("/health")
        assert health.status_code == 503
        assert "missing.gguf" in health.json()["models"]["broken"]["error"]
        assert c.get("/ready").status_code == 503
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "broken"})
        assert r.status_code == 503 and "failed to load" in r.json()["error"]["message"]
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
