"""The OpenAI Agents SDK's echo agent, for the contract modules that drive it through
the gateway: over chat completions (test_frameworks_contract) and over the Responses
API (test_responses_contract)."""

from __future__ import annotations

from typing import Any

from tests.conftest import ADMIN_KEY


def echo_agent(
    stack: dict[str, Any], model: str, seen: list[str], *, responses: bool, **kw: Any
) -> Any:
    """An agent forced to call its echo tool (whose inputs go to ``seen``), on the
    SDK's Responses model or, with ``responses`` False, its chat completions model."""
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    set_tracing_disabled(True)  # it would send traces to OpenAI

    @function_tool
    def echo(text: str) -> str:
        """Echo the text back."""
        seen.append(text)
        return f"echoed: {text}"

    client = AsyncOpenAI(base_url=f"{stack['base']}/v1", api_key=ADMIN_KEY, max_retries=0)
    kind = OpenAIResponsesModel if responses else OpenAIChatCompletionsModel
    return Agent(
        name="echoer",
        instructions="Use the echo tool on the user's words.",
        tools=[echo],
        model=kind(model=model, openai_client=client),
        model_settings=ModelSettings(tool_choice="required", max_tokens=60, temperature=0),
        **kw,
    )


async def run_echo(agent: Any, stream: bool, **kw: Any) -> Any:
    """The agent's final output for "Echo hello world"; a streamed run must send both
    raw model events and run-item events."""
    from agents import Runner

    if not stream:
        return (await Runner.run(agent, "Echo hello world", max_turns=4, **kw)).final_output
    run = Runner.run_streamed(agent, "Echo hello world", max_turns=4, **kw)
    kinds = {event.type async for event in run.stream_events()}
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    return run.final_output
