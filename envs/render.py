"""Token-in/token-out rendering of a multi-turn episode through the model's own chat template.

An episode's tokens are built by appending, never by re-rendering: earlier turns are never
re-tokenised (that can move token boundaries and break the behaviour log-probs). Three pieces:

:func:`render_prompt`      the first prompt: the row's messages with ``tools=[t.schema() ...]`` and the
                           generation prompt. Where the template ignores ``tools=`` (detected by rendering
                           with and without tools; SmolLM2's and the tiny model's ChatML templates do),
                           :meth:`ToolParser.format_instructions` goes into the system prompt instead:
                           appended after a blank line to the row's system message, or as a new first
                           system message (which replaces a template's default one, e.g. SmolLM2's).
:func:`turn_close`         the tokens that close the model's turn after what it generated: the template's
                           end of an assistant turn (ChatML ``<|im_end|>\\n``) minus the part the model
                           already emitted. A model that stopped on EOS ``<|im_end|>`` gets ``\\n``; one
                           cut by a stop string or the length limit gets ``<|im_end|>\\n``.
:func:`render_observation` the tokens of the observation messages *including* the next generation prompt.

The last two use the suffix trick: render a fixed dummy conversation that ends in an assistant
turn, render it again followed by the new messages, and keep the token suffix, after checking that
the first rendering is a token prefix of the second (a :class:`RenderError` otherwise). So
``render_prompt + generated + turn_close + render_observation`` equals the template's rendering of
the whole conversation (tested on the tiny model's tokenizer).

Tool messages: where the template has no ``tool`` role (rendering one raises, or drops its content),
each tool message becomes a user message ``Tool result (name): content`` (consecutive ones joined in
one user message, for templates that insist on alternating roles). Plain ChatML templates render
any role name, so there they stay ``<|im_start|>tool``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from envs.base import Tool
from envs.parsers import get_parser

Messages = list[dict[str, Any]]
_USER = {"role": "user", "content": "Hi."}
_DUMMY = [_USER, {"role": "assistant", "content": "OK"}]
_PROBE_TOOL = Tool(name="probe_tool_x7", description="probe", parameters={"type": "object", "properties": {}},
                   fn=lambda: "")
_PROBE_RESULT = "probe result q9"


class RenderError(ValueError):
    """The chat template cannot be used for token-in/token-out episodes; the message says why."""


@dataclass(frozen=True)
class _Facts:
    uses_tools: bool  # the template renders tools=
    tool_role: bool  # the template renders {"role": "tool"} messages
    close: list[int]  # tokens after an assistant message's content
    dummy: list[int]  # the dummy conversation, rendered without a generation prompt


# Per tokenizer object (weakly: a freed tokenizer's id may be reused) and chat template.
_FACTS: weakref.WeakKeyDictionary[Any, tuple[str | None, _Facts]] = weakref.WeakKeyDictionary()
# Episode steps run in worker threads, and a fast tokenizer is not safe to encode with from two
# threads at once ("Already borrowed"); renders take milliseconds, so one lock is enough.
_LOCK = threading.RLock()


def _ids(tokenizer: Any, messages: Messages, generation_prompt: bool, tools: list[dict] | None = None) -> list[int]:
    with _LOCK:
        ids = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=generation_prompt,
                                            tokenize=True, return_dict=False)
    return [int(i) for i in ids]


def _text(tokenizer: Any, messages: Messages, tools: list[dict] | None = None) -> str:
    with _LOCK:
        return str(tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False))


def _facts(tokenizer: Any) -> _Facts:
    template = getattr(tokenizer, "chat_template", None)
    cached = _FACTS.get(tokenizer)
    if cached is not None and cached[0] == template:
        return cached[1]
    uses_tools = _text(tokenizer, [_USER]) != _text(tokenizer, [_USER], [_PROBE_TOOL.schema()])
    try:
        tool_text = _text(tokenizer, _DUMMY + [{"role": "tool", "name": "probe", "content": _PROBE_RESULT}])
        tool_role = _PROBE_RESULT in tool_text
    except Exception:  # jinja2 TemplateError from raise_exception("...roles...")
        tool_role = False
    facts = _Facts(uses_tools, tool_role, _close_tokens(tokenizer), _ids(tokenizer, _DUMMY, False))
    _FACTS[tokenizer] = (template, facts)
    return facts


def _close_tokens(tokenizer: Any) -> list[int]:
    opened = _ids(tokenizer, [_USER], True)
    whole = _ids(tokenizer, _DUMMY, False)
    with _LOCK:
        content = [int(i) for i in tokenizer.encode(_DUMMY[1]["content"], add_special_tokens=False)]
    if whole[:len(opened)] != opened or whole[len(opened):len(opened) + len(content)] != content:
        raise RenderError("the chat template does not render an assistant turn as generation prompt + reply tokens "
                          "(it rewrites the reply or the generation prompt), so generated tokens cannot be "
                          "appended to the prompt; use a template that does, e.g. set tokenizer.chat_template")
    return whole[len(opened) + len(content):]


def template_uses_tools(tokenizer: Any) -> bool:
    """Whether ``tokenizer``'s chat template renders ``tools=`` (else tools go into the system prompt)."""
    return _facts(tokenizer).uses_tools


def with_tool_instructions(messages: Messages, tools: list[Tool], parser_name: str) -> Messages:
    """``messages`` with the parser's tool instructions in the system prompt (see the module docstring)."""
    if not tools:
        return list(messages)
    instructions = get_parser(parser_name).format_instructions(tools)
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{instructions}"}] + list(messages[1:])
    return [{"role": "system", "content": instructions}] + list(messages)


def render_prompt(tokenizer: Any, messages: Messages, tools: list[Tool], parser_name: str) -> list[int]:
    """The episode's first prompt tokens, ending in the generation prompt."""
    if tools and template_uses_tools(tokenizer):
        return _ids(tokenizer, messages, True, [t.schema() for t in tools])
    return _ids(tokenizer, with_tool_instructions(messages, tools, parser_name), True)


def turn_close(tokenizer: Any, generated: Sequence[int]) -> list[int]:
    """The tokens that complete the model's turn after ``generated`` (its sampled tokens, as returned).

    The template's closing tokens, minus the longest prefix of them that ``generated`` already ends
    with (the EOS the model stopped on).
    """
    close = _facts(tokenizer).close
    tail = list(generated[-len(close):]) if close else []
    for k in range(len(close), 0, -1):
        if tail[len(tail) - k:] == close[:k]:
            return close[k:]
    return list(close)


def observation_messages(tokenizer: Any, messages: Messages) -> Messages:
    """``messages`` as this template can render them: tool messages become user messages where it has no tool role."""
    if _facts(tokenizer).tool_role:
        return list(messages)
    out: Messages = []
    merged = False  # whether out[-1] is a user message made from tool results
    for m in messages:
        if m.get("role") != "tool":
            out.append(m)
            merged = False
            continue
        text = f"Tool result ({m.get('name') or 'tool'}): {m['content']}"
        if merged:
            out[-1] = {"role": "user", "content": f"{out[-1]['content']}\n\n{text}"}
        else:
            out.append({"role": "user", "content": text})
        merged = True
    return out


def render_observation(tokenizer: Any, messages: Messages) -> list[int]:
    """The tokens of ``messages`` (tool results, a user message) and the next generation prompt,
    to append after the model's closed turn (:func:`turn_close`)."""
    if not messages:
        raise ValueError("render_observation needs at least one message")
    prefix = _facts(tokenizer).dummy
    full = _ids(tokenizer, _DUMMY + observation_messages(tokenizer, messages), True)
    if full[:len(prefix)] != prefix:
        raise RenderError("the chat template renders a conversation differently once messages follow the "
                          "assistant's turn (its rendering is not a token prefix), so observations cannot be "
                          "appended without re-tokenising earlier turns")
    return full[len(prefix):]
