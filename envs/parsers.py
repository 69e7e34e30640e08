"""Tool-call parsers: read the calls in a model's reply, in the format its chat template taught it.

``hermes``  Hermes / Qwen2.5 / Qwen3: each call is ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
            several per reply (vLLM's ``hermes`` parser reads the same; an unclosed last tag is read to the end).
``llama3``  Llama 3.x JSON tool calling (vLLM's ``llama3_json``): the whole reply, or what follows
            ``<|python_tag|>``, is ``{"name": ..., "parameters": {...}}`` (``"arguments"`` accepted too),
            several separated by ``;``. A reply that does not start with ``{`` is plain text, not a call.

A call the parser cannot read (invalid JSON, no ``name``, arguments not an object) never raises: it
becomes an error string addressed to the model, e.g. ``tool call 1: invalid JSON at line 1 column 30:
Expecting ',' delimiter``, which the environment returns as an observation so the model can retry.

Stop strings: none. ``</tool_call>`` is deliberately *not* a stop string, so one reply can carry
several calls; the model ends its turn with its end-of-turn token (``<|im_end|>``, ``<|eot_id|>``,
``<|eom_id|>``) as it was tuned to. Text after the last call stays in the transcript (it is the
model's own tokens); only the calls are acted on.

:meth:`ToolParser.format_instructions` describes the tools in the parser's format (the wording of
the Qwen2.5 and Llama 3.1 chat templates) for models whose template ignores ``tools=``;
:meth:`ToolParser.format_call` writes a call the way the parser reads it (for SFT traces).
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from envs.base import Tool, ToolCall


class ToolParser(ABC):
    """Reads tool calls from a reply; one instance per format, stateless."""

    name: ClassVar[str]
    stop_strings: ClassVar[tuple[str, ...]] = ()
    arguments_key: ClassVar[str] = "arguments"

    @abstractmethod
    def parse(self, text: str) -> tuple[list[ToolCall], list[str]]:
        """The calls in ``text``, and one error string per call that could not be read."""

    @abstractmethod
    def format_instructions(self, tools: list[Tool]) -> str:
        """A system-prompt section describing ``tools`` and how to call them in this format."""

    def format_call(self, call: ToolCall) -> str:
        """``call`` as the model should write it (the inverse of :meth:`parse`)."""
        return json.dumps({"name": call.name, self.arguments_key: call.arguments}, ensure_ascii=False)


def _json_error(index: int, exc: json.JSONDecodeError) -> str:
    return f"tool call {index}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"


def to_call(obj: Any, index: int, keys: tuple[str, ...] = ("arguments",)) -> ToolCall | str:
    """A :class:`ToolCall` from a decoded JSON object, or an error string for call ``index`` (1-based).

    The arguments are the first of ``keys`` present (missing: ``{}``); a JSON string holding an
    object (the OpenAI wire form) is decoded.
    """
    if not isinstance(obj, dict):
        return f'tool call {index}: expected a JSON object {{"name": ..., "{keys[0]}": {{...}}}}, got {_kind(obj)}'
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return f'tool call {index}: missing "name" (a non-empty string naming the tool)'
    key = next((k for k in keys if k in obj), keys[0])
    arguments = obj.get(key, {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return f'tool call {index} ({name}): "{key}" is a string that is not valid JSON: {exc.msg}'
    if not isinstance(arguments, dict):
        return f'tool call {index} ({name}): "{key}" must be a JSON object, got {_kind(arguments)}'
    call_id = obj.get("id")
    return ToolCall(name=name, arguments=arguments, id=call_id if isinstance(call_id, str) else None)


def _collect(result: ToolCall | str, calls: list[ToolCall], errors: list[str]) -> None:
    if isinstance(result, str):
        errors.append(result)
    else:
        calls.append(result)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


class HermesParser(ToolParser):
    """``<tool_call>{json}</tool_call>``, any number per reply."""

    name = "hermes"
    _CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)

    def parse(self, text: str) -> tuple[list[ToolCall], list[str]]:
        calls: list[ToolCall] = []
        errors: list[str] = []
        for index, match in enumerate(self._CALL_RE.finditer(text), start=1):
            body = (match.group(1) if match.group(1) is not None else match.group(2)).strip()
            try:
                result = to_call(json.loads(body), index)
            except json.JSONDecodeError as exc:
                result = _json_error(index, exc)
            _collect(result, calls, errors)
        return calls, errors

    def format_instructions(self, tools: list[Tool]) -> str:
        # The Qwen2.5 chat template's tool section, word for word.
        schemas = "\n".join(json.dumps(t.schema(), ensure_ascii=False) for t in tools)
        return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
                f"{schemas}\n</tools>\n\n"
                "For each function call, return a json object with function name and arguments within "
                "<tool_call></tool_call> XML tags:\n<tool_call>\n"
                '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')

    def format_call(self, call: ToolCall) -> str:
        return f"<tool_call>\n{super().format_call(call)}\n</tool_call>"


class Llama3JsonParser(ToolParser):
    """Llama 3.x JSON calls: the whole reply (or what follows ``<|python_tag|>``), ``;``-separated."""

    name = "llama3"
    arguments_key = "parameters"
    PYTHON_TAG = "<|python_tag|>"
    _decoder = json.JSONDecoder()

    def parse(self, text: str) -> tuple[list[ToolCall], list[str]]:
        if self.PYTHON_TAG in text:
            body = text.split(self.PYTHON_TAG, 1)[1]
        elif text.lstrip().startswith("{"):
            body = text
        else:
            return [], []
        calls: list[ToolCall] = []
        errors: list[str] = []
        pos, index = 0, 1
        while True:
            pos = _skip(body, pos, " \t\r\n")
            if pos >= len(body):
                break
            try:
                obj, pos = self._decoder.raw_decode(body, pos)
            except json.JSONDecodeError as exc:
                errors.append(_json_error(index, exc))
                break  # the rest cannot be split reliably
            result = to_call(obj, index, ("parameters", "arguments"))
            _collect(result, calls, errors)
            index += 1
            pos = _skip(body, pos, " \t\r\n")
            if pos < len(body) and body[pos] != ";":
                errors.append(f"tool call {index}: expected ';' or the end of the reply after a call, "
                              f"found {body[pos:pos + 20]!r}")
                break
            pos += 1
        return calls, errors

    def format_instructions(self, tools: list[Tool]) -> str:
        # The Llama 3.1/3.2 chat template's JSON tool-calling wording.
        schemas = "\n\n".join(json.dumps(t.schema(), indent=4, ensure_ascii=False) for t in tools)
        return ("Given the following functions, please respond with a JSON for a function call with its proper "
                "arguments that best answers the given prompt.\n\n"
                'Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
                'value}. Do not use variables.\n\n' + schemas)


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


PARSERS: dict[str, type[ToolParser]] = {"hermes": HermesParser, "llama3": Llama3JsonParser,
                                        "llama3_json": Llama3JsonParser}


def get_parser(name: str) -> ToolParser:
    """The parser registered as ``name`` (``hermes``, ``llama3``; ``llama3_json`` as vLLM spells it)."""
    try:
        return PARSERS[name]()
    except KeyError:
        raise ValueError(f"unknown tool-call parser {name!r}; known: {', '.join(sorted(PARSERS))}") from None
