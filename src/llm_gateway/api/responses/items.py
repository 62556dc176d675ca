"""Pure converters from Responses API input items to the internal messages.

Spec: OpenAI API reference, "Responses", input items. A message item has a role
(``user``, ``system``, ``developer``, ``assistant``) and content (a string or
parts: ``input_text``, ``input_image`` by URL, ``output_text`` and ``refusal``
in assistant turns). A ``function_call`` item is a call the model made: it joins
the assistant turn before it, as chat templates expect one assistant turn with
its calls. A ``function_call_output`` item answers a call by its ``call_id``.
``reasoning`` items are skipped (no model here makes them, and their content is
opaque); any other item type is refused, naming the item.
"""

from __future__ import annotations

from llm_gateway.api.responses.schemas import ContentPart, InputItem
from llm_gateway.errors import InvalidRequest
from llm_gateway.types import Message, Role, ToolCall

_ROLES: dict[str, Role] = {
    "user": "user",
    "system": "system",
    "developer": "system",
    "assistant": "assistant",
}
_TEXT_PARTS = {"input_text", "output_text", "text"}
KINDS = ("message", "function_call", "function_call_output")
SKIPPED = {"reasoning"}


def _image(where: str, part: ContentPart) -> str:
    if part.image_url:
        return part.image_url
    how = "by file_id is" if part.file_id else "without image_url is"
    raise InvalidRequest(
        f"{where}: an input_image {how} not supported; give image_url (an http(s) or data: URL)",
        param=f"{where}.image_url",
    )


def _content(where: str, content: str | list[ContentPart] | None) -> tuple[str, list[str]]:
    """(text, image URLs) of a message's content: a string or a list of parts."""
    if content is None or isinstance(content, str):
        return content or "", []
    texts, images = [], []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if part.type in _TEXT_PARTS:
            texts.append(part.text or "")
        elif part.type == "refusal":
            texts.append(part.refusal or part.text or "")
        elif part.type == "input_image":
            images.append(_image(at, part))
        else:
            raise InvalidRequest(
                f"{at}.type '{part.type}' is not supported; input_text, input_image, "
                f"output_text and refusal parts are",
                param=f"{at}.type",
            )
    return "".join(texts), images


def _message(where: str, item: InputItem) -> Message:
    role = _ROLES.get(item.role or "")
    if role is None:
        raise InvalidRequest(
            f"{where}.role '{item.role}' is not one of {', '.join(_ROLES)}",
            param=f"{where}.role",
        )
    text, images = _content(where, item.content)
    return Message(role=role, content=text, images=images or None)


def _call(where: str, item: InputItem) -> ToolCall:
    for name in ("call_id", "name"):
        if not getattr(item, name):
            raise InvalidRequest(f"{where} (function_call) needs '{name}'", param=f"{where}.{name}")
    assert item.call_id is not None and item.name is not None
    return ToolCall(id=item.call_id, name=item.name, arguments=item.arguments or "{}")


def _output_text(output: str | list[ContentPart] | None) -> str:
    """A call's output: a string, or parts whose text is joined."""
    if output is None or isinstance(output, str):
        return output or ""
    return "".join(p.text or "" for p in output if p.type in _TEXT_PARTS)


def _answer(where: str, item: InputItem, names: dict[str, str]) -> Message:
    if not item.call_id:
        raise InvalidRequest(
            f"{where} (function_call_output) needs 'call_id'", param=f"{where}.call_id"
        )
    if item.call_id not in names:
        raise InvalidRequest(
            f"{where}.call_id '{item.call_id}' answers no function_call in the input "
            f"(or in the previous response)",
            param=f"{where}.call_id",
        )
    return Message(
        role="tool",
        content=_output_text(item.output),
        tool_call_id=item.call_id,
        name=names[item.call_id],
    )


def _kind(where: str, item: InputItem) -> str:
    kind = item.type or ("message" if item.role else "")
    if kind in KINDS or kind in SKIPPED:
        return kind
    if not kind:
        raise InvalidRequest(f"{where} has neither 'type' nor 'role'", param=f"{where}.type")
    raise InvalidRequest(
        f"{where}.type '{kind}' is not supported; input items are {', '.join(KINDS)} "
        f"(reasoning items are skipped)",
        param=f"{where}.type",
    )


def to_messages(items: list[InputItem], first_new: int = 0) -> list[Message]:
    """The messages of ``items``: those before ``first_new`` come from a stored
    response (errors name ``previous_response_id``), the rest are ``input[i]``."""
    out: list[Message] = []
    names: dict[str, str] = {}  # call_id -> function name
    for i, item in enumerate(items):
        where = f"input[{i - first_new}]" if i >= first_new else "previous_response_id"
        kind = _kind(where, item)
        if kind == "message":
            out.append(_message(where, item))
        elif kind == "function_call":
            call = _call(where, item)
            names[call.id] = call.name
            last = out[-1] if out else None
            if last is None or last.role != "assistant":
                last = Message(role="assistant", content="")
                out.append(last)
            last.tool_calls = [*(last.tool_calls or ()), call]
        elif kind == "function_call_output":
            out.append(_answer(where, item, names))
    return out
