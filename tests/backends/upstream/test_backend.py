"""Upstream backends against real local servers (tests/upstreams.py): both client protocols
to both upstream kinds, retries, the circuit breaker, fallbacks, mid-stream death, cancellation."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest
import yaml
from starlette.testclient import TestClient

from llm_gateway import Settings
from tests.conftest import ADMIN_KEY, admin_client, free_port, start_gateway
from tests.upstreams import Cue, upstream

PROMPT = "alpha beta gamma delta"
MSGS = [{"role": "user", "content": PROMPT}]
CHAT = {"messages": MSGS}


def models_file(tmp_path: Path, models: list[dict[str, Any]]) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return path


@contextmanager
def gateway(tmp_path: Path, models: list[dict[str, Any]], **extra: Any) -> Iterator[TestClient]:
    settings = Settings(
        config=models_file(tmp_path, models),
        data_dir=tmp_path,
        admin_key=ADMIN_KEY,
        usage_flush_interval_s=0.05,
        **extra,
    )
    with admin_client(settings) as c:
        yield c


def test_official_clients_reach_both_upstream_kinds_both_ways(tmp_path: Path) -> None:
    with ExitStack() as stack:
        oa_url, oa_cue = stack.enter_context(upstream("openai"))
        ol_url, ol_cue = stack.enter_context(upstream("ollama"))
        config = models_file(
            tmp_path,
            [
                {"name": "up-openai", "backend": "openai", "url": oa_url, "upstream_model": "m1"},
                {"name": "up-ollama", "backend": "ollama", "url": ol_url, "aliases": ["llama"]},
            ],
        )
        env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "WARNING"}
        proc, base = start_gateway(["--config", str(config), "--data-dir", str(tmp_path)], env)
        try:
            oai = openai.OpenAI(base_url=f"{base}/v1", api_key=ADMIN_KEY, max_retries=0)
            oll = ollama.Client(host=base, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            for model in ("up-openai", "up-ollama"):
                # OpenAI client, not streamed and streamed.
                done = oai.chat.completions.create(model=model, messages=MSGS)  # type: ignore[arg-type]
                assert done.choices[0].message.content == PROMPT
                assert done.usage is not None and done.usage.completion_tokens == 4
                parts = oai.chat.completions.create(
                    model=model,
                    messages=MSGS,
                    stream=True,
                    stream_options={"include_usage": True},  # type: ignore[arg-type]
                )
                chunks = list(parts)
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                assert text == PROMPT and len(chunks) >= 5  # chunk by chunk, not one blob
                completion = oai.completions.create(model=model, prompt="one two", max_tokens=5)
                assert completion.choices[0].text == "one two"
                # Ollama client, both ways.
                reply = oll.chat(model=model, messages=MSGS)
                assert reply.message.content == PROMPT and reply.eval_count == 4
                streamed = list(oll.chat(model=model, messages=MSGS, stream=True))
                assert "".join(p.message.content or "" for p in streamed) == PROMPT
                assert streamed[-1].done
                assert oll.generate(model=model, prompt="x y z").response == "x y z"
            # The upstream got its own model name.
            assert oa_cue.requests[0]["body"]["model"] == "m1"
            streams = [r["body"]["stream"] for r in oa_cue.requests + ol_cue.requests]
            assert True in streams and False in streams  # asked the way the client asked
            assert ol_cue.requests[0]["body"]["model"] == "up-ollama"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_retries_move_to_the_next_replica(tmp_path: Path) -> None:
    with upstream("openai", Cue(fail=[503, 429])) as (a, cue_a), upstream("openai") as (b, cue_b):
        models = [{"name": "m", "backend": "openai", "urls": [a, b], "retries": 2}]
        with gateway(tmp_path, models) as c:
            for _ in range(2):
                r = c.post("/v1/chat/completions", json={"model": "m", **CHAT})
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["message"]["content"] == PROMPT
        assert len(cue_a.requests) >= 1 and len(cue_b.requests) >= 2


def test_client_errors_are_not_retried(tmp_path: Path) -> None:
    with upstream("openai", Cue(fail=[400])) as (a, cue):
        with gateway(tmp_path, [{"name": "m", "backend": "openai", "url": a}]) as c:
            r = c.post("/v1/chat/completions", json={"model": "m", **CHAT})
            assert r.status_code == 400
            assert "cued failure 400" in r.json()["error"]["message"]
        assert len(cue.requests) == 1


def test_upstream_down_is_an_error_in_the_callers_protocol(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with gateway(tmp_path, [{"name": "m", "backend": "openai", "url": dead, "retries": 1}]) as c:
        r = c.post("/v1/chat/completions", json={"model": "m", **CHAT})
        assert r.status_code in (502, 503)
        assert r.json()["error"]["type"] in ("upstream_error", "service_unavailable")
        o = c.post("/api/chat", json={"model": "m", **CHAT, "stream": False})
        assert o.status_code in (502, 503) and isinstance(o.json()["error"], str)
        health = c.get("/health").json()["models"]["m"]
        assert health["replicas"][0]["healthy"] is False
        assert c.get("/ready").status_code == 503


def test_breaker_opens_and_traffic_goes_to_the_healthy_replica(tmp_path: Path) -> None:
    with upstream("openai", Cue(fail=[500] * 50)) as (a, cue_a), upstream("openai") as (b, _):
        models = [{"name": "m", "backend": "openai", "urls": [a, b], "retries": 1}]
        with gateway(tmp_path, models) as c:
            for _ in range(6):
                r = c.post("/v1/chat/completions", json={"model": "m", **CHAT})
                assert r.status_code == 200
            replicas = {x["url"]: x for x in c.get("/health").json()["models"]["m"]["replicas"]}
            assert replicas[a]["circuit"] == "open"
            assert replicas[b]["circuit"] == "closed"
            seen = len(cue_a.requests)
            for _ in range(4):
                assert (
                    c.post("/v1/chat/completions", json={"model": "m", **CHAT}).status_code == 200
                )
            assert len(cue_a.requests) == seen  # an open circuit gets nothing


def _falling_back(dead: str, backup: str, **backup_extra: Any) -> list[dict[str, Any]]:
    """A model 'primary' on a dead upstream that falls back to 'backup'."""
    primary = {"name": "primary", "backend": "ollama", "url": dead, "retries": 0}
    return [
        {**primary, "fallbacks": ["backup"]},
        {"name": "backup", "backend": "ollama", "url": backup, **backup_extra},
    ]


def test_fallback_to_another_model(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with upstream("ollama") as (backup, cue):
        models = _falling_back(dead, backup)
        with gateway(tmp_path, models) as c:
            r = c.post("/v1/chat/completions", json={"model": "primary", **CHAT})
            assert r.status_code == 200
            assert r.json()["choices"][0]["message"]["content"] == PROMPT
        assert len(cue.requests) == 1


def test_mid_stream_death_ends_in_band_and_is_recorded(tmp_path: Path) -> None:
    with (
        upstream("openai", Cue(die_after=2)) as (a, _),
        gateway(tmp_path, [{"name": "m", "backend": "openai", "url": a}]) as c,
    ):
        with c.stream(
            "POST", "/v1/chat/completions", json={"model": "m", **CHAT, "stream": True}
        ) as r:
            assert r.status_code == 200
            body = r.read().decode()
        events = [e for e in body.split("\n\n") if e.startswith("data: ")]
        assert "alpha" in events[0]
        assert '"error"' in events[-1] and "mid-stream" in events[-1]
        o = c.post("/api/chat", json={"model": "m", **CHAT})
        last = o.text.strip().splitlines()[-1]
        assert '"error"' in last

        # Both streams are recorded, with the error, though they answered 200.
        expected = {"type": "upstream_error", "status": 200, "count": 2}
        deadline = time.monotonic() + 10
        while expected not in c.get("/api/admin/stats").json()["errors"]:
            assert time.monotonic() < deadline, c.get("/api/admin/stats").json()["errors"]
            time.sleep(0.05)
        text = c.get("/metrics").text
        errors = 'llmgw_backend_errors_total{backend="openai",model="m",type="upstream_error"}'
        assert f"{errors} 2.0" in text


def test_client_disconnect_cancels_the_upstream_request(tmp_path: Path) -> None:
    words = " ".join(f"w{i}" for i in range(100))
    with (
        upstream("openai", Cue(chunk_delay_s=0.05)) as (a, cue),
        gateway(tmp_path, [{"name": "m", "backend": "openai", "url": a}]) as c,
    ):
        body = {"model": "m", "messages": [{"role": "user", "content": words}], "stream": True}
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # first chunk in hand: hang up
        deadline = time.monotonic() + 5
        while cue.cancelled == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cue.cancelled == 1  # well before the 100 chunks (5 s) were sent


def test_models_file_errors_are_clear(tmp_path: Path) -> None:
    from llm_gateway.core.model_specs import load_specs
    from llm_gateway.core.registry import builtin_kinds
    from llm_gateway.errors import ConfigError

    bad = [
        ([{"name": "m", "backend": "openai"}], "needs url or urls"),
        ([{"name": "m", "backend": "openai", "url": "ftp://x"}], "not an http(s) URL"),
        ([{"name": "m", "backend": "openai", "urls": ["http://a"], "weights": [1, 2]}], "weights"),
    ]
    for models, message in bad:
        settings = Settings(config=models_file(tmp_path, models), data_dir=tmp_path)
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_specs(settings, builtin_kinds())


def test_successes_keep_the_breaker_closed_and_a_trial_closes_it(tmp_path: Path) -> None:
    with upstream("openai", Cue()) as (a, cue):
        models = [{"name": "m", "backend": "openai", "url": a, "retries": 0}]
        with gateway(tmp_path, models) as c:

            def circuit() -> str:
                replica = c.get("/health").json()["models"]["m"]["replicas"][0]
                return str(replica["circuit"])

            ask = {"model": "m", **CHAT}
            # Failures with successes between them never open the circuit...
            for _ in range(4):
                cue.fail.append(500)
                assert c.post("/v1/chat/completions", json=ask).status_code == 502
                assert c.post("/v1/chat/completions", json=ask).status_code == 200
            assert circuit() == "closed"
            # ...three in a row do; after the cool-down one good request closes it.
            cue.fail.extend([500, 500, 500])
            for _ in range(3):
                assert c.post("/v1/chat/completions", json=ask).status_code in (502, 503)
            assert circuit() == "open"
            assert c.post("/v1/chat/completions", json=ask).status_code == 503  # not tried
            time.sleep(5.1)  # BREAKER_COOLDOWN_S
            stream = {**ask, "stream": True}
            with c.stream("POST", "/v1/chat/completions", json=stream) as r:
                assert r.status_code == 200 and "[DONE]" in r.read().decode()
            assert circuit() == "closed"


def test_a_slow_whole_answer_is_not_cut_by_the_first_byte_timeout(tmp_path: Path) -> None:
    with upstream("openai", Cue(delay_s=0.6)) as (a, cue):
        models = [
            {
                "name": "m",
                "backend": "openai",
                "url": a,
                "timeouts": {"first_byte": 0.3, "total": 5},
            }
        ]
        with gateway(tmp_path, models) as c:
            r = c.post("/v1/chat/completions", json={"model": "m", **CHAT})
            assert r.status_code == 200, r.text  # headers come only with the whole answer
            assert len(cue.requests) == 1  # not retried
            # A stream must start within first_byte: this one is retried, then fails.
            body = {"model": "m", **CHAT, "stream": True}
            assert c.post("/v1/chat/completions", json=body).status_code in (502, 503)


def test_a_fallback_is_admitted_against_its_own_limits(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with upstream("ollama") as (backup, cue):
        models = _falling_back(dead, backup, limits={"requests_per_minute": 1})
        with gateway(tmp_path, models) as c:
            ask = {"model": "primary", **CHAT}
            assert c.post("/v1/chat/completions", json=ask).status_code == 200
            # The backup's one request a minute is used up: asking for "primary" again
            # must not get past it; the primary's own failure is what the caller sees.
            second = c.post("/v1/chat/completions", json=ask)
            assert second.status_code in (502, 503)
            assert len(cue.requests) == 1


def test_a_fallback_that_fails_too_gives_its_admission_back(tmp_path: Path) -> None:
    dead, also_dead = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
    models = _falling_back(dead, also_dead, retries=0, limits={"concurrent_requests": 1})
    with gateway(tmp_path, models) as c:
        assert c.post("/v1/chat/completions", json={"model": "primary", **CHAT}).status_code in (
            502,
            503,
        )
        # The backup's one concurrent slot is free again: its own failure, not a 429.
        again = c.post("/v1/chat/completions", json={"model": "backup", **CHAT})
        assert again.status_code in (502, 503), again.text
