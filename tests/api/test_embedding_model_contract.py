"""An embedding-only GGUF (all-MiniLM-L6-v2, a BERT encoder) served in process:
the vectors match a plain numpy forward pass of the original weights, similar
sentences land close together, both protocols and langchain's clients get them,
and asking it to generate text is a 400 naming the model."""

from __future__ import annotations

from typing import Any

import numpy as np
import ollama
import openai
import pytest

from tests.conftest import ADMIN_KEY, AUTH
from tests.models.minilm import minilm_dir, reference

pytestmark = pytest.mark.model

CAT, KITTEN, STOCKS = (
    "A cat sits on the mat.",
    "A kitten is lying on the rug.",
    "Stock markets fell sharply today.",
)


def _reference(text: str) -> np.ndarray:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.no_padding()
    return reference(minilm_dir(), tok.encode(text).ids)


def test_vectors_match_the_original_model(oa: openai.OpenAI) -> None:
    r = oa.embeddings.create(model="minilm", input=[CAT, STOCKS])
    assert [d.index for d in r.data] == [0, 1]
    for text, item in zip([CAT, STOCKS], r.data, strict=True):
        v = np.array(item.embedding)
        assert v.shape == (384,)
        assert float(v @ _reference(text)) > 0.999  # F16 weights against float32
    assert r.usage.prompt_tokens == 9 + 8  # [CLS] ... [SEP]


def test_similar_sentences_are_closer(oa: openai.OpenAI) -> None:
    r = oa.embeddings.create(model="minilm", input=[CAT, KITTEN, STOCKS], dimensions=128)
    cat, kitten, stocks = (np.array(d.embedding) for d in r.data)
    assert len(cat) == 128
    assert cat @ kitten > 0.5 > cat @ stocks


def test_many_inputs_batched_give_each_its_own_vector(oa: openai.OpenAI) -> None:
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'markets'}" for i in range(100)]
    together = oa.embeddings.create(model="minilm", input=texts).data
    alone = [oa.embeddings.create(model="minilm", input=texts[i]).data[0] for i in (0, 57, 99)]
    for i, one in zip((0, 57, 99), alone, strict=True):
        # the same vector, up to the rounding of a bigger batch's matrix products
        assert float(np.array(together[i].embedding) @ np.array(one.embedding)) > 0.9999
        assert float(np.array(together[i + 1 if i < 99 else 0].embedding) @ one.embedding) < 0.99


def test_ollama_embed(ol: ollama.Client) -> None:
    r = ol.embed(model="minilm", input=[CAT, KITTEN])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 384
    assert r.prompt_eval_count == 9 + 10


def test_langchain_embeddings(stack: dict[str, Any]) -> None:
    from langchain_ollama import OllamaEmbeddings
    from langchain_openai import OpenAIEmbeddings

    oa = OpenAIEmbeddings(
        model="minilm",
        base_url=f"{stack['base']}/v1",
        api_key=ADMIN_KEY,  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
    )
    ol = OllamaEmbeddings(model="minilm", base_url=stack["base"], client_kwargs={"headers": AUTH})
    a, b = oa.embed_query(CAT), ol.embed_query(CAT)
    assert float(np.array(a) @ np.array(b)) > 0.9999
    assert float(np.array(a) @ _reference(CAT)) > 0.999


def test_generating_text_is_a_400_naming_the_model(oa: openai.OpenAI, ol: ollama.Client) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oa.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}])
    assert "embedding model" in str(err.value) and "minilm" in str(err.value)
    assert err.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(ollama.ResponseError) as oerr:
        ol.generate(model="minilm", prompt="hi")
    assert oerr.value.status_code == 400 and "embedding model" in oerr.value.error


def test_listed_and_healthy(oa: openai.OpenAI, stack: dict[str, Any]) -> None:
    import httpx

    assert "minilm" in {m.id for m in oa.models.list()}
    health = httpx.get(f"{stack['base']}/health", headers=AUTH).json()
    assert health["models"]["minilm"]["status"] == "ok", health
