"""Models as a managed cache, through a real gateway and the official ollama client:
three in-process models on a budget for two, loaded on first use, the least
recently used idle one unloaded to make room, keep_alive (0 unloads, a duration
expires), /api/ps and /health showing each model's state, and a model busy
with a request never unloaded under it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
import yaml

from llm_gateway.backends.upstream.config import HttpPool
from llm_gateway.core.model_specs import builtin_model_path
from llm_gateway.core.registry import build_registry
from llm_gateway.errors import ConfigError
from llm_gateway.settings import Settings, duration_s
from tests.conftest import ADMIN_KEY, AUTH, start_gateway, wait_for

pytestmark = pytest.mark.model


def _start(tmp: Path, budget: int) -> tuple[Any, str]:
    models = [{"name": n, "backend": "engine"} for n in ("a", "b", "c")]
    models.append({"name": "warm", "backend": "engine", "preload": True, "keep_alive": "1h"})
    (tmp / "models.yaml").write_text(yaml.safe_dump({"models": models}))
    args = ["--config", str(tmp / "models.yaml"), "--data-dir", str(tmp), "--threads", "2"]
    args += ["--model-memory-bytes", str(budget), "--model-load-wait-s", "0.5"]
    env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "WARNING"}
    return start_gateway(args, env)


def _loaded_size(tmp: Path) -> int:
    """What one of these models holds once loaded, as the gateway counts it."""
    proc, base = _start(tmp, 1 << 40)
    try:
        return int(httpx.get(f"{base}/health").json()["models"]["warm"]["size_bytes"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("cache")
    size = _loaded_size(tmp)
    assert size > builtin_model_path().stat().st_size  # the KV cache counts
    proc, base = _start(tmp, int(size * 2.5))  # two models fit, not three
    try:
        ol = ollama.Client(host=base, headers=AUTH)
        assert _states(base)["warm"] == "loaded"  # preload: true
        _unload_all(ol)
        for name in ("a", "b", "c"):  # each loaded once: its size is known
            ol.generate(model=name, prompt="")
            ol.generate(model=name, prompt="", keep_alive=0)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _loaded(ol: ollama.Client) -> set[str]:
    return {m.model for m in ol.ps().models}


def _states(base: str) -> dict[str, str]:
    return {n: m["state"] for n, m in httpx.get(f"{base}/health").json()["models"].items()}


def _unload_all(ol: ollama.Client) -> None:
    for name in ("a", "b", "c", "warm"):
        ol.generate(model=name, prompt="", keep_alive=0)


def test_lazy_models_load_on_use_and_the_oldest_idle_one_makes_room(gateway: str) -> None:
    ol = ollama.Client(host=gateway, headers=AUTH)
    assert {"a", "b", "c"}.isdisjoint(_loaded(ol))  # known, not loaded
    assert httpx.get(f"{gateway}/ready").status_code == 200
    _unload_all(ol)
    for name in ("a", "b"):
        assert ol.generate(model=name, prompt="Hi", options={"num_predict": 2}).done
    assert _loaded(ol) == {"a", "b"}
    ol.generate(model="a", prompt="Hi again", options={"num_predict": 2})  # b is now the oldest
    ol.generate(model="c", prompt="Hi", options={"num_predict": 2})
    assert _loaded(ol) == {"a", "c"}
    assert _states(gateway) == {"a": "loaded", "b": "known", "c": "loaded", "warm": "known"}
    ps = {m.model: m for m in ol.ps().models}
    assert ps["a"].size and ps["a"].expires_at is not None and ps["a"].expires_at.year == 9999


def test_keep_alive_zero_unloads_and_a_duration_expires(gateway: str) -> None:
    ol = ollama.Client(host=gateway, headers=AUTH)
    _unload_all(ol)
    r = ol.generate(model="a", prompt="Hi", options={"num_predict": 2}, keep_alive="1s")
    assert r.done and "a" in _loaded(ol)
    expires = {m.model: m.expires_at for m in ol.ps().models}["a"]
    assert expires is not None and expires.year < 9999
    assert wait_for(lambda: "a" not in _loaded(ol), timeout_s=10)
    assert ol.generate(model="b", prompt="").done_reason == "load" and "b" in _loaded(ol)
    assert ol.generate(model="b", prompt="", keep_alive=0).done_reason == "unload"
    assert "b" not in _loaded(ol)
    with pytest.raises(ollama.ResponseError) as info:
        ol.generate(model="b", prompt="", keep_alive="soon")
    assert info.value.status_code == 400 and "keep_alive" in str(info.value)


def _long(model: str) -> dict[str, Any]:
    prompt = "Count from 1 to 1000, separated by spaces."
    body = {"model": model, "prompt": prompt, "options": {"num_predict": 1000, "temperature": 0}}
    return body


def _active(base: str, model: str) -> bool:
    return bool(httpx.get(f"{base}/health").json()["models"][model].get("active_sequences"))


def test_a_busy_model_is_not_unloaded_under_its_request(gateway: str) -> None:
    ol = ollama.Client(host=gateway, headers=AUTH)
    _unload_all(ol)
    ol.generate(model="a", prompt="", keep_alive=-1)
    ol.generate(model="b", prompt="", keep_alive=-1)
    url = f"{gateway}/api/generate"
    with httpx.stream("POST", url, headers=AUTH, json=_long("a"), timeout=60) as busy_a:
        lines_a = busy_a.iter_lines()  # kept: a dropped iterator closes the stream
        next(lines_a)
        assert wait_for(lambda: _active(gateway, "a"))
        ol.generate(model="b", prompt="Hi", options={"num_predict": 2})  # a is older, but busy
        ol.generate(model="c", prompt="Hi", options={"num_predict": 2})  # so b makes room
        assert _loaded(ol) == {"a", "c"}
        with httpx.stream("POST", url, headers=AUTH, json=_long("c"), timeout=60) as busy_c:
            lines_c = busy_c.iter_lines()
            next(lines_c)
            assert wait_for(lambda: _active(gateway, "c"))
            started = time.monotonic()
            r = httpx.post(url, headers=AUTH, json={"model": "b", "prompt": "x"})
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"] and "memory budget" in r.json()["error"]
            assert time.monotonic() - started >= 0.5  # it waited for room first
    # The streams closed: their generations ended, and b loads again.
    assert ol.generate(model="b", prompt="Hi", options={"num_predict": 2}).done


def test_durations() -> None:
    assert [duration_s(v) for v in (300, "10s", "5m", "1h30m", "-1", "300ms")] == [
        300.0,
        10.0,
        300.0,
        5400.0,
        -1.0,
        0.3,
    ]
    with pytest.raises(ValueError, match="not a duration"):
        duration_s("5 minutes")


def test_the_models_file_refuses_a_bad_keep_alive(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("models:\n  - name: x\n    keep_alive: soon\n")
    with pytest.raises(ConfigError, match="keep_alive"):
        build_registry(Settings(config=tmp_path / "m.yaml", data_dir=tmp_path), HttpPool())
