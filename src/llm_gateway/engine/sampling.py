"""A request's sampling parameters as the engine's sampler configuration.

Unset parameters take llama.cpp's defaults (``SamplerConfig``); a JSON
response format or a forced tool call becomes a grammar (toolprompt).
"""

from __future__ import annotations

import random
from typing import Any

from llm_gateway.engine.sampler import SamplerConfig, grammar_for_json
from llm_gateway.engine.toolprompt import forced_schema
from llm_gateway.errors import InvalidRequest
from llm_gateway.types import GenerationRequest


def _grammar(request: GenerationRequest) -> str | None:
    schema: dict[str, Any] | None = forced_schema(request)
    param = "tools"
    if schema is None:
        if request.json_format is None:
            return None
        schema, param = request.json_format.schema, "response_format"
    try:
        return grammar_for_json(schema)
    except Exception as exc:  # the converter raises plain exceptions
        raise InvalidRequest(f"unsupported JSON schema: {exc}", param=param) from exc


def sampler_config(request: GenerationRequest) -> SamplerConfig:
    s = request.sampling
    base = SamplerConfig()
    return SamplerConfig(
        temperature=base.temperature if s.temperature is None else s.temperature,
        top_k=base.top_k if s.top_k is None else s.top_k,
        top_p=base.top_p if s.top_p is None else s.top_p,
        min_p=base.min_p if s.min_p is None else s.min_p,
        seed=random.getrandbits(32) if s.seed is None else s.seed,
        repeat_penalty=base.repeat_penalty if s.repeat_penalty is None else s.repeat_penalty,
        repeat_last_n=base.repeat_last_n if s.repeat_last_n is None else s.repeat_last_n,
        presence_penalty=s.presence_penalty or 0.0,
        frequency_penalty=s.frequency_penalty or 0.0,
        grammar=_grammar(request),
    )
