"""Chat templates from GGUF metadata, rendered in a sandboxed Jinja2 environment.

Templates are untrusted input (they ship inside model files), so they run in
Jinja2's ImmutableSandboxedEnvironment, the way Hugging Face transformers does.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NoReturn

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llm_gateway.engine.toolprompt import fallback_payload, native_message, tool_spec
from llm_gateway.errors import InvalidRequest
from llm_gateway.types import Message, Tool

# Used when a GGUF file carries no template: ChatML, which SmolLM2, Qwen and
# many others are trained on.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _raise(message: str) -> NoReturn:
    raise InvalidRequest(f"chat template refused the messages: {message}", param="messages")


class ChatTemplate:
    """A compiled chat template; render() turns messages into a prompt string."""

    def __init__(self, source: str | None, *, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source or CHATML
        self._template = env.from_string(self.source)
        self._bos = bos_token
        self._eos = eos_token
        # Hugging Face's test: a template that reads `tools` renders them itself.
        self.knows_tools = "tools" in self.source

    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Tool] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt; tools go in the template's own way, or the fallback's (toolprompt)."""
        extra: dict[str, Any] = {}
        if not self.knows_tools:
            payload = fallback_payload(messages, tools)
        else:
            payload = [native_message(m) for m in messages]
            if tools:
                extra["tools"] = [tool_spec(t) for t in tools]
        try:
            return self._template.render(
                messages=payload,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
                **extra,
            )
        except InvalidRequest:
            raise
        except TemplateError as exc:
            raise InvalidRequest(f"chat template failed: {exc}", param="messages") from exc
