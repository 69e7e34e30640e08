"""The default environment loop for tool use: run the calls in a reply, answer with their results.

:meth:`ToolEnvironment.step` runs each call the parser found, in order, and answers with one
``{"role": "tool", "name": ..., "content": ...}`` message per call (and per unreadable call). A reply
without calls or parse errors ends the episode (``done=True``): that is the final answer, which
:meth:`Environment.final_reward` scores. Everything that can go wrong in a call is an observation
the model can read, counted in :attr:`StepResult.tool_errors`, never an exception:

- a call the parser could not read (its error string, e.g. invalid JSON);
- an unknown tool name (the message lists the tools there are);
- arguments that do not fit the tool's JSON schema (a missing required key, a wrong JSON type, a
  key the schema does not define unless it allows ``additionalProperties``);
- the tool raising (the exception's message), or more than :attr:`max_calls_per_turn` calls.

``StepResult.info`` carries ``calls`` (one ``{"name", "arguments", "ok", "seconds", "error"}`` per
call, unreadable ones with ``name`` None) and ``tool_s`` (their total seconds); see :mod:`envs.base`.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from envs.base import Environment, EpisodeStart, StepResult, Tool, ToolCall

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "object": (dict,), "array": (list,), "null": (type(None),),
}


def check_arguments(tool: Tool, arguments: dict[str, Any]) -> str | None:
    """Why ``arguments`` do not fit ``tool.parameters`` (top-level keys and JSON types), or None."""
    schema = tool.parameters
    properties: dict[str, Any] = schema.get("properties", {})
    missing = [k for k in schema.get("required", []) if k not in arguments]
    if missing:
        return f"{tool.name}: missing required argument(s) {', '.join(map(repr, missing))}"
    if not schema.get("additionalProperties", False):
        extra = [k for k in arguments if k not in properties]
        if extra:
            return (f"{tool.name}: unknown argument(s) {', '.join(map(repr, extra))}; "
                    f"it takes {', '.join(map(repr, properties)) or 'no arguments'}")
    for key, value in arguments.items():
        expected = properties.get(key, {}).get("type")
        names = [expected] if isinstance(expected, str) else list(expected or [])
        types = tuple(t for n in names for t in _JSON_TYPES.get(n, (object,)))
        # bool is an int in Python, not in JSON
        if names and (not isinstance(value, types) or (isinstance(value, bool) and "boolean" not in names)):
            got = f"{type(value).__name__} {value!r:.60}"
            return f"{tool.name}: argument {key!r} must be {' or '.join(names)}, got {got}"
    return None


class ToolEnvironment(Environment):
    """Runs the model's tool calls; subclasses set :attr:`tools` and implement :meth:`final_reward`.

    :attr:`replies` holds the model's replies so far (the last is the final answer once done).
    """

    max_calls_per_turn: ClassVar[int] = 8
    max_observation_chars: ClassVar[int] = 4000

    def reset(self, start: EpisodeStart) -> None:
        super().reset(start)
        self.replies: list[str] = []

    def step(self, reply: str, calls: list[ToolCall], parse_errors: list[str]) -> StepResult:
        self.replies.append(reply)
        if not calls and not parse_errors:
            return StepResult(messages=[], done=True, info={"calls": [], "tool_s": 0.0})
        by_name = {t.name: t for t in self.tools}
        messages: list[dict[str, Any]] = []
        records: list[dict[str, Any]] = []
        for index, call in enumerate(calls):
            if index >= self.max_calls_per_turn:
                text, ok, seconds = f"error: more than {self.max_calls_per_turn} tool calls in one turn; " \
                                    "this one was not run", False, 0.0
            else:
                text, ok, seconds = self._run(by_name, call)
            message = {"role": "tool", "name": call.name, "content": text}
            if call.id is not None:
                message["tool_call_id"] = call.id
            messages.append(message)
            records.append({"name": call.name, "arguments": call.arguments, "ok": ok, "seconds": seconds,
                            "error": None if ok else text})
        for error in parse_errors:
            messages.append({"role": "tool", "name": "invalid_tool_call", "content": f"error: {error}"})
            records.append({"name": None, "arguments": None, "ok": False, "seconds": 0.0, "error": error})
        return StepResult(messages=messages, done=False, tool_errors=sum(not r["ok"] for r in records),
                          info={"calls": records, "tool_s": sum(r["seconds"] for r in records)})

    def _run(self, by_name: dict[str, Tool], call: ToolCall) -> tuple[str, bool, float]:
        """(observation text, ok, seconds) for one call."""
        tool = by_name.get(call.name)
        if tool is None:
            return f"error: unknown tool {call.name!r}; the tools are {', '.join(map(repr, by_name)) or 'none'}", \
                False, 0.0
        problem = check_arguments(tool, call.arguments)
        if problem is not None:
            return f"error: {problem}", False, 0.0
        started = time.perf_counter()
        try:
            text, ok = str(tool.fn(**call.arguments)), True
        except Exception as exc:  # the tool's own failure is the model's observation
            text, ok = f"error: {exc}" if str(exc) else f"error: {type(exc).__name__}", False
        seconds = time.perf_counter() - started
        cut = len(text) - self.max_observation_chars
        if cut > 0:
            text = text[:self.max_observation_chars] + f"\n... ({cut} more characters)"
        return text, ok, seconds
