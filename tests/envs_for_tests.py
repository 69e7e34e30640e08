"""Environments for tests and the tiny multi-turn config (configs/tiny_cpu_tools.toml).

A random tiny model never writes a well-formed ``<tool_call>``, so with ``arith_tools`` as shipped
every episode would end after one turn. :class:`EagerArithTools` reads a reply without a call as a
call of the ``calculator`` tool on the reply's text: the calculator really runs, a reply that is not
an expression becomes its error observation (a counted tool error), and episodes last
``environment.max_turns`` turns (or until their token budget is spent), with gaps in the loss mask.
"""

from __future__ import annotations

import time
from typing import ClassVar

from envs.base import Environment, EpisodeStart, StepResult, Tool, ToolCall
from envs.builtin import ArithToolsEnv
from envs.tools import calculator_tool


class EagerArithTools(ArithToolsEnv):
    """``arith_tools`` where every reply is a calculator call (see the module docstring).

    The class lists no tools, so the prompt carries no tool instructions: the character tokenizer
    spends ~700 tokens on them and the tiny model has 512 positions. Each episode's object has the
    calculator (the instance attribute ToolEnvironment.step reads), so the calls really run."""

    tools: ClassVar[list[Tool]] = []

    def reset(self, start: EpisodeStart) -> None:
        super().reset(start)
        self.tools = [calculator_tool()]  # type: ignore[misc]  # per object, see the class docstring

    def step(self, reply: str, calls: list[ToolCall], parse_errors: list[str]) -> StepResult:
        if not calls and not parse_errors:
            calls = [ToolCall("calculator", {"expression": reply.strip() or "?"})]
        return super().step(reply, calls, parse_errors)


class SlowTool(Environment):
    """Each step sleeps ``delay_s`` then answers with a user message; rewards 0.5 per turn and 1.0 at the end."""

    tools: ClassVar[list[Tool]] = []
    delay_s: ClassVar[float] = 0.0

    def step(self, reply: str, calls: list[ToolCall], parse_errors: list[str]) -> StepResult:
        time.sleep(self.delay_s)
        return StepResult(messages=[{"role": "user", "content": "go on"}], done=False, reward=0.5)

    def final_reward(self) -> float:
        return 1.0


class Broken(SlowTool):
    """``step`` raises: the episode ends with an error, the generator lives on."""

    def step(self, reply: str, calls: list[ToolCall], parse_errors: list[str]) -> StepResult:
        raise RuntimeError("broken environment")
