"""The in-process engine with the real built-in model: batching, cancellation, exactness."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from llm_gateway.backends.engine import EngineBackend, EngineOptions
from llm_gateway.core.model_specs import builtin_model_path
from llm_gateway.errors import ContextLengthExceeded, Overloaded
from llm_gateway.types import Chunk, GenerationRequest, JsonFormat, Message, Sampling

pytestmark = pytest.mark.model

GREEDY = Sampling(temperature=0)


def options(**over: int) -> EngineOptions:
    base = dict(
        ctx_size=4096,
        max_sequences=8,
        threads=2,
        batch_size=128,
        queue_size=32,
        default_max_tokens=256,
    )
    base.update(over)
    return EngineOptions(**base)


@pytest.fixture(scope="module")
async def engine() -> AsyncIterator[EngineBackend]:
    backend = EngineBackend("smollm2", builtin_model_path(), options())
    await backend.start()
    yield backend
    await backend.stop()


@pytest.fixture(scope="module")
def prompt_tokens() -> Callable[[GenerationRequest], int]:
    """An oracle independent of the engine: llama-cpp-python's own tokenizer and
    chat-template renderer over the same GGUF file."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    vocab = Llama(str(builtin_model_path()), vocab_only=True, verbose=False)
    text_of = vocab._model.token_get_text
    render = Jinja2ChatFormatter(
        vocab.metadata["tokenizer.chat_template"],
        eos_token=text_of(vocab.token_eos()),
        bos_token=text_of(vocab.token_bos()),
    )

    def count(req: GenerationRequest) -> int:
        messages = [{"role": m.role, "content": m.content} for m in req.messages or []]
        prompt = render(messages=messages).prompt  # type: ignore[arg-type]
        return len(vocab.tokenize(prompt.encode(), add_bos=True, special=True))

    return count


def chat(text: str, max_tokens: int = 16, **kw: object) -> GenerationRequest:
    return GenerationRequest(
        model="smollm2",
        messages=[Message("user", text)],
        max_tokens=max_tokens,
        sampling=kw.pop("sampling", GREEDY),
        **kw,
    )  # type: ignore[arg-type]


async def run(engine: EngineBackend, req: GenerationRequest) -> tuple[str, Chunk]:
    parts, final = [], None
    async for chunk in engine.stream(req):
        parts.append(chunk.text)
        final = chunk
    assert final is not None and final.usage is not None
    return "".join(parts), final


async def test_concurrent_requests_all_finish_with_exact_counts(
    engine: EngineBackend, prompt_tokens: Callable[[GenerationRequest], int]
) -> None:
    topics = [
        "cats",
        "the sea",
        "trains",
        "Paris",
        "music",
        "winter",
        "bread",
        "stars",
        "rivers",
        "clocks",
        "bees",
        "maps",
    ]
    reqs = [chat(f"Write a long essay about {t}.", max_tokens=12) for t in topics]
    results = await asyncio.gather(*(run(engine, r) for r in reqs))
    for req, (text, final) in zip(reqs, results, strict=True):
        assert final.usage is not None
        assert final.usage.prompt_tokens == prompt_tokens(req)
        assert final.finish_reason in ("stop", "length")
        if final.finish_reason == "length":
            assert final.usage.completion_tokens == 12
        assert text
    state = engine.health()
    assert state["active_sequences"] == 0 and state["kv_cells_used"] == 0


async def test_greedy_output_is_reproducible(engine: EngineBackend) -> None:
    req = chat("Name three colours.", max_tokens=20)
    first, _ = await run(engine, req)
    second, _ = await run(engine, req)
    assert first == second


async def test_shared_prompt_prefix_is_not_prefilled_again(engine: EngineBackend) -> None:
    system = Message("system", "You are a pirate who answers in one short sentence. " * 4)
    first = GenerationRequest(
        model="m", messages=[system, Message("user", "Hi!")], max_tokens=4, sampling=GREEDY
    )
    other = GenerationRequest(
        model="m", messages=[system, Message("user", "Bye!")], max_tokens=4, sampling=GREEDY
    )
    _, a = await run(engine, first)
    _, b = await run(engine, other)
    _, again = await run(engine, first)
    assert a.usage is not None and b.usage is not None and again.usage is not None
    assert 40 < b.usage.cached_tokens < b.usage.prompt_tokens
    assert again.usage.cached_tokens >= b.usage.cached_tokens  # at least the system prompt
    _, repeat = await run(engine, first)
    assert repeat.usage is not None
    assert repeat.usage.cached_tokens == repeat.usage.prompt_tokens - 1


async def test_cancelling_one_stream_leaves_the_others_intact(engine: EngineBackend) -> None:
    async def cancelled() -> int:
        stream = engine.stream(chat("Tell me a long story about a dragon.", max_tokens=200))
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        return seen

    others = [
        run(engine, chat(f"Count to ten in {lang}.", max_tokens=24))
        for lang in ("English", "French")
    ]
    results = await asyncio.gather(cancelled(), *others)
    assert results[0] == 3
    for _text, final in results[1:]:
        assert final.usage is not None and final.usage.completion_tokens > 0
    await asyncio.sleep(0.2)  # the engine drops the cancelled sequence on its next step
    state = engine.health()
    assert state["active_sequences"] == 0 and state["kv_cells_used"] == 0


async def test_stop_string_ends_generation(engine: EngineBackend) -> None:
    text, _ = await run(engine, chat("Count from 1 to 20, separated by commas.", 60))
    assert "5" in text
    cut, final = await run(engine, chat("Count from 1 to 20, separated by commas.", 60, stop=["5"]))
    assert final.finish_reason == "stop" and "5" not in cut
    assert text.startswith(cut) and final.stop_sequence == "5"


async def test_json_schema_constrains_output(engine: EngineBackend) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
    }
    text, final = await run(
        engine,
        chat(
            "What is the capital of France? Answer in JSON.",
            80,
            json_format=JsonFormat(schema=schema),
        ),
    )
    assert final.finish_reason == "stop"
    assert isinstance(json.loads(text)["city"], str)


async def test_prompt_longer_than_context_is_refused(engine: EngineBackend) -> None:
    with pytest.raises(ContextLengthExceeded, match="at most"):
        await run(engine, chat("word " * 10_000))


async def test_full_queue_is_refused_with_retry_after() -> None:
    small = EngineBackend("tiny", builtin_model_path(), options(max_sequences=1, queue_size=0))
    await small.start()
    try:
        results = await asyncio.gather(
            *(run(small, chat("Say hello.", max_tokens=8)) for _ in range(3)),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, Overloaded)]
        assert refused and refused[0].headers["Retry-After"] == "1"
        assert any(isinstance(r, tuple) for r in results)
    finally:
        await small.stop()


async def test_requantized_copy_is_made_once_and_reused(tmp_path: Path) -> None:
    opts = options(max_sequences=1)
    cached = EngineOptions(**{**opts.__dict__, "quantize": "q8_0", "cache_dir": tmp_path})
    first = EngineBackend("q8", builtin_model_path(), cached)
    await first.start()
    try:
        assert first.details().quantization_level == "Q8_0"
        text, _ = await run(first, chat("Say hello.", max_tokens=4))
        assert text
    finally:
        await first.stop()
    (copy,) = tmp_path.glob("*.q8_0.gguf")
    made = copy.stat().st_mtime_ns
    again = EngineBackend("q8", builtin_model_path(), cached)
    await again.start()
    await again.stop()
    assert copy.stat().st_mtime_ns == made


async def test_a_full_cache_preempts_and_every_request_still_finishes() -> None:
    tight = EngineBackend(
        "tight", builtin_model_path(), options(ctx_size=256, max_sequences=4, batch_size=64)
    )
    await tight.start()
    try:
        reqs = [
            chat(f"Tell a long story about {t}.", max_tokens=200)
            for t in ("owls", "ships", "kings", "bees")
        ]
        results = await asyncio.wait_for(asyncio.gather(*(run(tight, r) for r in reqs)), 120)
        for _text, final in results:
            assert final.finish_reason in ("stop", "length")
            assert final.usage is not None and final.usage.completion_tokens > 0
        assert tight.health()["active_sequences"] == 0
    finally:
        await tight.stop()
