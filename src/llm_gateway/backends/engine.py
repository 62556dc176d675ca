"""The in-process llama.cpp backend: loads a GGUF file and serves it through the batching scheduler.

Everything that touches llama.cpp is imported lazily, so a gateway that serves
no local model never loads the library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_gateway.backends.model_file import describe, quantized
from llm_gateway.backends.registry import BackendKind, BackendKinds, BuildContext
from llm_gateway.backends.spec import ModelSpec
from llm_gateway.engine.placement import Placement, placement_for
from llm_gateway.errors import ContextLengthExceeded, GatewayError, InvalidRequest, NotReady
from llm_gateway.types import (
    Chunk,
    EmbeddingRequest,
    Embeddings,
    GenerationRequest,
    Message,
    ModelDetails,
)

if TYPE_CHECKING:
    from llm_gateway.engine.embedding import EmbeddingService
    from llm_gateway.engine.job import Job
    from llm_gateway.engine.llama import Context, Model
    from llm_gateway.engine.sampler import Sampler
    from llm_gateway.engine.scheduler import Scheduler
    from llm_gateway.engine.template import ChatTemplate

log = logging.getLogger(__name__)

# Prompts longer than this (characters) are tokenized off the event loop.
_INLINE_TOKENIZE_CHARS = 8192


@dataclass(frozen=True, kw_only=True)
class EngineOptions:
    """Engine sizing for one model (from Settings, overridable per model)."""

    ctx_size: int
    max_sequences: int
    threads: int
    batch_size: int
    queue_size: int
    default_max_tokens: int
    quantize: str = "none"
    cache_dir: Path | None = None
    stream_interval_ms: float = 0.0
    placement: Placement = field(default_factory=Placement)


def build(spec: ModelSpec, context: BuildContext) -> EngineBackend:
    """An engine for a models-file entry: the settings' sizing, with the entry's own over it."""
    settings = context.settings
    assert spec.path is not None  # the models file gives one, or the built-in model's
    o = spec.overrides
    options = EngineOptions(
        ctx_size=o.get("ctx_size", settings.ctx_size),
        max_sequences=o.get("max_sequences", settings.max_sequences),
        threads=o.get("threads", settings.resolved_threads()),
        batch_size=o.get("batch_size", settings.batch_size),
        queue_size=o.get("queue_size", settings.queue_size),
        default_max_tokens=settings.default_max_tokens,
        quantize=settings.quantize or spec.quantize or "none",
        cache_dir=settings.data_dir / "models",
        stream_interval_ms=settings.stream_interval_ms,
        placement=placement_for(settings, spec.gpu),
    )
    return EngineBackend(spec.name, spec.path, options)


def register(kinds: BackendKinds) -> None:
    kinds.add(BackendKind("engine", build))


class EngineBackend:
    """A GGUF model served in process with continuous batching."""

    complete = None  # non-streaming requests collect the stream

    def __init__(self, name: str, path: Path, options: EngineOptions) -> None:
        self.name = name
        self.path = path
        self.options = options
        self._model: Model | None = None
        self._ctx: Context | None = None
        self._scheduler: Scheduler | None = None
        self._template: ChatTemplate | None = None
        self._embeddings: EmbeddingService | None = None
        self._bos_text = ""
        self._load_ns = 0
        self._details = ModelDetails()
        self.load_progress = 0.0
        self.load_error: str | None = None

    # ---- lifecycle --------------------------------------------------------
    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._load)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            raise

    def _load(self) -> None:
        from llm_gateway.engine.llama import Model

        started = time.perf_counter_ns()
        if not self.path.is_file():
            raise FileNotFoundError(f"model file not found: {self.path}")
        opts = self.options
        path = quantized(self.path, opts.quantize, opts.cache_dir, opts.threads)
        log.info("loading model %s from %s", self.name, path)
        model = Model(path, progress=self._on_progress, placement=opts.placement)
        try:
            self._serve(model)
        except BaseException:
            model.close()
            raise
        self._load_ns = time.perf_counter_ns() - started
        placed = model.placed()
        log.info(
            "model %s ready: %s, %d-token cache, %d sequences, %d threads, %d/%d layers on "
            "the GPU (%.2fs)",
            self.name,
            model.facts.description,
            self._scheduler.cfg.n_ctx if self._scheduler else 0,
            self.options.max_sequences,
            self.options.threads,
            placed["layers_on_gpu"],
            placed["layers"],
            self._load_ns / 1e9,
        )

    def _serve(self, model: Model) -> None:
        """Context, template and scheduler for a loaded model; frees the context on failure."""
        from llm_gateway.engine.embedding import EmbeddingService, embeds_only
        from llm_gateway.engine.job import SchedulerConfig
        from llm_gateway.engine.llama import Context
        from llm_gateway.engine.scheduler import Scheduler
        from llm_gateway.engine.template import ChatTemplate

        opts = self.options
        if embeds_only(model):  # no chat context: the embedder runs on its own thread
            self._model = model
            self._details = describe(self.path, model, model.facts.n_ctx_train, "")
            self._embeddings = EmbeddingService(
                self.name, model, None, opts.threads, opts.queue_size
            )
            return
        # Every live sequence needs its decode token in each step's batch.
        batch = max(opts.batch_size, opts.max_sequences)
        n_ctx = min(opts.ctx_size, max(model.facts.n_ctx_train, 256) * opts.max_sequences)
        ctx = Context(
            model, n_ctx=n_ctx, n_batch=batch, n_seq=opts.max_sequences, threads=opts.threads
        )
        try:
            template = ChatTemplate(
                model.facts.metadata.get("tokenizer.chat_template"),
                bos_token=model.token_text(model.bos),
                eos_token=model.token_text(model.eos),
            )
            cfg = SchedulerConfig(
                max_sequences=opts.max_sequences,
                queue_size=opts.queue_size,
                batch_size=batch,
                n_ctx=ctx.n_ctx,
                max_seq_len=min(ctx.n_ctx, model.facts.n_ctx_train or ctx.n_ctx),
                flush_interval_s=opts.stream_interval_ms / 1000,
            )
            scheduler = Scheduler(model, ctx, cfg)
        except BaseException:
            ctx.close()
            raise
        self._bos_text = model.token_text(model.bos) if model.adds_bos else ""
        self._template = template
        self._model, self._ctx = model, ctx
        self._details = describe(self.path, model, cfg.max_seq_len, template.source)
        scheduler.start()
        self._scheduler = scheduler
        self._embeddings = EmbeddingService(
            self.name, model, scheduler, opts.threads, opts.queue_size
        )

    def _on_progress(self, fraction: float) -> None:
        step = int(fraction * 10)
        if step > int(self.load_progress * 10):
            log.info("loading %s: %d%%", self.name, step * 10)
        self.load_progress = fraction

    async def stop(self) -> None:
        scheduler, ctx, model = self._scheduler, self._ctx, self._model
        self._scheduler = self._ctx = self._model = None
        if scheduler is not None:
            await asyncio.to_thread(scheduler.stop)
        if self._embeddings is not None:
            self._embeddings.close()  # after the thread that runs it has stopped
            self._embeddings = None
        if ctx is not None:
            ctx.close()
        if model is not None:
            model.close()

    @property
    def embedding_only(self) -> bool:
        return self._scheduler is None and self._embeddings is not None

    @property
    def ready(self) -> bool:
        if self.embedding_only:
            return True
        return self._scheduler is not None and self._scheduler.failed is None

    def health(self) -> dict[str, Any]:
        if self.load_error is not None:
            return {"status": "failed", "backend": "engine", "error": self.load_error}
        if self.embedding_only:
            return {"status": "ok", "backend": "engine", "embedding_only": True}
        if self._scheduler is None:
            return {
                "status": "loading",
                "backend": "engine",
                "progress": round(self.load_progress, 3),
            }
        state: dict[str, Any] = {"status": "ok" if self.ready else "failed", "backend": "engine"}
        state.update(self._scheduler.state())
        if self._model is not None:
            state.update(self._model.placed())
        if self._scheduler.failed:
            state["error"] = self._scheduler.failed
        return state

    def details(self) -> ModelDetails:
        return self._details

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        if self._embeddings is None:
            raise NotReady(f"model '{self.name}' is still loading")
        return await self._embeddings.embed(request)

    # ---- requests ---------------------------------------------------------
    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        from llm_gateway.engine.toolprompt import forced_schema, offered_tools
        from llm_gateway.engine.toolstream import with_tool_calls

        scheduler = self._generating()
        job = await self._prepare(request)
        chunks = self._run(scheduler, job)
        if offered_tools(request):
            chunks = with_tool_calls(chunks, request, forced_schema(request) is not None)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk

    def _generating(self) -> Scheduler:
        """The scheduler, once the model can generate; else why it cannot."""
        if self.embedding_only:
            raise InvalidRequest(
                f"model '{self.name}' is an embedding model: it does not generate text",
                param="model",
            )
        if self._scheduler is None:
            if self.load_error is not None:
                raise NotReady(f"model '{self.name}' failed to load: {self.load_error}")
            raise NotReady(f"model '{self.name}' is still loading")
        return self._scheduler

    async def _run(self, scheduler: Scheduler, job: Job) -> AsyncGenerator[Chunk, None]:
        try:
            scheduler.submit(job)
        except GatewayError:
            if job.smpl is not None:
                job.smpl.close()
            raise
        done = False
        try:
            if job.echo and not job.score_prompt:
                yield Chunk(text=job.echo)
            while True:
                kind, payload = await job.queue.get()
                if kind == "text":
                    yield Chunk(text=payload)
                elif kind == "scored":
                    yield Chunk(text=payload[0], logprobs=payload[1])
                elif kind == "prompt":
                    yield Chunk(text=job.echo, logprobs=payload)
                elif kind == "done":
                    done = True
                    reason, usage = payload
                    usage.load_ns = 0
                    matched = job.text.matched if job.text is not None else None
                    yield Chunk(text="", finish_reason=reason, usage=usage, stop_sequence=matched)
                    return
                else:
                    done = True
                    raise payload
        finally:
            if not done:
                scheduler.cancel(job)

    async def _prepare(self, request: GenerationRequest) -> Job:
        from llm_gateway.engine.job import Job

        if request.messages is not None and any(m.images for m in request.messages):
            raise InvalidRequest(
                f"model '{self.name}' does not take images (it has no multimodal projector)",
                param="messages",
            )
        tokens = await self._prompt_tokens(request)
        assert self._scheduler is not None
        limit = self._scheduler.cfg.max_seq_len
        if not tokens:
            raise InvalidRequest("the prompt is empty", param="prompt")
        if len(tokens) >= limit:
            raise ContextLengthExceeded(
                f"the prompt is {len(tokens)} tokens; model '{self.name}' accepts at most "
                f"{limit - 1} prompt tokens",
                param="messages" if request.is_chat else "prompt",
            )
        max_tokens = request.max_tokens or self.options.default_max_tokens
        s = request.sampling
        return Job(
            prompt=tokens,
            max_tokens=min(max_tokens, limit - len(tokens)),
            smpl=self._sampler(request),
            stops=request.stop,
            loop=asyncio.get_running_loop(),
            special=bool(request.tools),  # tool-call markers may be special tokens
            top=request.top_logprobs if request.logprobs else -1,
            temperature=1.0 if s.temperature is None else s.temperature,
            score_prompt=request.echo and request.logprobs,
            echo=request.prompt or "" if request.echo else "",
            background=request.background,
        )

    async def count_tokens(self, request: GenerationRequest) -> int:
        self._generating()
        return len(await self._prompt_tokens(request))

    async def _prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """The prompt's tokens; a long prompt is tokenized off the event loop."""
        text = self._prompt_text(request)
        if len(text) > _INLINE_TOKENIZE_CHARS:
            return await asyncio.to_thread(self._tokenize, text)
        return self._tokenize(text)

    def _prompt_text(self, request: GenerationRequest) -> str:
        """The prompt: the chat template's rendering of the messages (a last assistant
        message without tool calls is a prefill, which the model continues, as in
        llama.cpp's server and Ollama), or the completion prompt."""
        assert self._template is not None
        if request.messages is not None:
            from llm_gateway.engine.toolprompt import offered_tools

            messages, tools = request.messages, offered_tools(request)
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant" and not last.tool_calls:
                return self._template.render(messages[:-1], tools=tools) + last.content
            return self._template.render(messages, tools=tools)
        prompt = request.prompt or ""
        if request.raw:
            return prompt
        return self._template.render([Message(role="user", content=prompt)])

    def _tokenize(self, text: str) -> list[int]:
        assert self._model is not None
        add_bos = bool(self._bos_text) and not text.startswith(self._bos_text)
        return self._model.tokenize(text, add_special=add_bos, parse_special=True)

    def _sampler(self, request: GenerationRequest) -> Sampler:
        from llm_gateway.engine.llama import LlamaError
        from llm_gateway.engine.sampler import Sampler
        from llm_gateway.engine.sampling import sampler_config

        assert self._model is not None
        try:
            return Sampler(self._model, sampler_config(request))
        except LlamaError as exc:
            param = "response_format" if request.json_format is not None else "tools"
            raise InvalidRequest(str(exc), param=param) from exc


__all__ = ["EngineBackend", "EngineOptions", "register"]
