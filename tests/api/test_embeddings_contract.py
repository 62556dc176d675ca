"""Embeddings through the real server with the official clients: the built-in model
(mean pooling, unit vectors, batching), both upstream kinds, bad input, usage."""

from __future__ import annotations

import math
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.conftest import AUTH

pytestmark = pytest.mark.model


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


TEXTS = ["The cat sat on the mat.", "A cat is sitting on a mat.", "Stock prices fell sharply."]


def test_openai_embeddings_on_the_engine(oa: openai.OpenAI) -> None:
    r = oa.embeddings.create(model="smollm2", input=TEXTS)
    vecs = [d.embedding for d in sorted(r.data, key=lambda d: d.index)]
    assert len(vecs) == 3 and all(len(v) == 576 for v in vecs)  # SmolLM2-135M's width
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4) for v in vecs)
    assert _cos(vecs[0], vecs[1]) > _cos(vecs[0], vecs[2])  # similar texts are nearer
    assert r.usage.prompt_tokens > 10 and r.usage.total_tokens == r.usage.prompt_tokens
    # The same text alone or in a batch: the same vector (batching changes nothing).
    alone = oa.embeddings.create(model="smollm2", input=TEXTS[2]).data[0].embedding
    assert _cos(alone, vecs[2]) > 0.9999
    # base64 (the openai client's default) decodes to the same numbers.
    b64 = oa.embeddings.create(model="smollm2", input=TEXTS[0], encoding_format="base64")
    assert isinstance(b64.data[0].embedding, str)
    short = oa.embeddings.create(model="smollm2", input=TEXTS[0], dimensions=64)
    assert len(short.data[0].embedding) == 64
    tokens = oa.embeddings.create(model="smollm2", input=[[504, 2365, 314]])
    assert len(tokens.data[0].embedding) == 576 and tokens.usage.prompt_tokens == 3


def test_ollama_embed_on_the_engine(ol: ollama.Client, oa: openai.OpenAI) -> None:
    r = ol.embed(model="smollm2", input=TEXTS)
    assert len(r.embeddings) == 3 and r.prompt_eval_count and r.prompt_eval_count > 10
    same = oa.embeddings.create(model="smollm2", input=TEXTS).data
    assert _cos(list(r.embeddings[1]), same[1].embedding) > 0.9999
    old = ol.embeddings(model="smollm2", prompt=TEXTS[0])
    assert _cos(list(old.embedding), list(r.embeddings[0])) > 0.9999


def test_embeddings_through_upstreams(
    oa: openai.OpenAI, ol: ollama.Client, stack: dict[str, Any]
) -> None:
    for model in ("up-openai", "up-ollama"):
        r = oa.embeddings.create(model=model, input=["a b", "c d e"], encoding_format="float")
        assert [d.embedding for d in r.data] == [[3.0, 2.0, 1.0], [5.0, 3.0, 1.0]]
        assert r.usage.prompt_tokens == 4
        o = ol.embed(model=model, input=["a b", "c d e"])
        assert [list(v) for v in o.embeddings] == [[3.0, 2.0, 1.0], [5.0, 3.0, 1.0]]
    assert stack["ollama_cue"].requests[-1]["path"] == "/api/embed"
    assert stack["openai_cue"].requests[-1]["body"]["input"] == ["a b", "c d e"]


BAD = [
    ({"model": "smollm2", "input": ""}, "input"),
    ({"model": "smollm2", "input": []}, "input"),
    ({"model": "smollm2", "input": ["ok", ""]}, "input"),
    ({"model": "smollm2", "input": [[99999999]]}, "input"),
    ({"model": "smollm2", "input": "x", "dimensions": 5000}, "dimensions"),
    ({"model": "smollm2", "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"model": "smollm2", "input": "word " * 3000}, "input"),
    ({"model": "smollm2", "input": 5}, "input"),
    ({"model": "up-ollama", "input": [[1, 2]]}, "input"),
]


@pytest.mark.parametrize(("body", "param"), BAD)
def test_bad_embedding_input_is_a_400_naming_the_field(
    stack: dict[str, Any], body: dict[str, Any], param: str
) -> None:
    r = httpx.post(f"{stack['base']}/v1/embeddings", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_embedding_tokens_are_counted_in_usage(oa: openai.OpenAI, stack: dict[str, Any]) -> None:
    before = httpx.get(f"{stack['base']}/metrics", headers=AUTH).text
    oa.embeddings.create(model="smollm2", input=["count these tokens please"] * 4)
    after = httpx.get(f"{stack['base']}/metrics", headers=AUTH).text

    def tokens_in(text: str) -> float:
        for line in text.splitlines():
            if (
                line.startswith("llmgw_tokens_total")
                and 'model="smollm2"' in line
                and 'direction="in"' in line
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    assert tokens_in(after) - tokens_in(before) >= 16
