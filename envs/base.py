"""The environment interface: what the generator's episode loop (rollout/episode.py) drives.

An episode starts from one dataset row (:class:`EpisodeStart`); the model's prompt is the row's
chat messages rendered with the environment's tools (:mod:`envs.render`). Then, turn by turn, the
generator samples the model's reply, parses tool calls from it (:mod:`envs.parsers`) and calls
:meth:`Environment.step` with the reply and the calls; the environment answers with observation
messages (tool results, or a user message), whether the episode is done, and optionally a reward
for that turn. :meth:`Environment.final_reward` closes the episode. The episode reward is the sum
of the turn rewards and the final reward (None everywhere: the reward worker scores the
transcript with the row's reward function, as for single-turn samples).

    class Arith(ToolEnvironment):
        tools = [calculator_tool()]

        def final_reward(self) -> float:
            return 1.0 if last_number(self.replies[-1]) == self.start.ground_truth else 0.0

``step`` runs in a worker thread of the generator (generation never waits on it); a tool that
executes untrusted code must go through :mod:`sandbox`. One environment object serves one
episode: the generator builds a fresh one per sample.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for; ``id`` when the format carries one."""

    name: str
    arguments: dict[str, Any]
    id: str | None = None


@dataclass(frozen=True)
class Tool:
    """A plain Python callable with a JSON schema for its arguments. ``fn(**arguments)`` returns the
    text the model reads; raising makes an error observation (counted as a tool error)."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object
    fn: Callable[..., str]
    sandboxed: bool = False  # runs untrusted code in sandbox/: a generator checks the sandbox at start

    def schema(self) -> dict[str, Any]:
        """The OpenAI/HF function-tool format that chat templates take as ``tools=``."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass(frozen=True)
class EpisodeStart:
    """What an environment knows of its dataset row."""

    prompt_id: int
    data_source: str
    ground_truth: str
    messages: list[dict[str, str]] = field(default_factory=list)  # the row's prompt, before tools are rendered


@dataclass
class StepResult:
    """The environment's answer to one model turn.

    ``info`` is free-form, but :class:`envs.tool_env.ToolEnvironment` (and the rollout loop, which
    records it in the trajectory for dumps and metrics) uses these keys:

    ``calls``   one dict per call the parser found or failed to read, in order:
                ``{"name": str | None, "arguments": dict | None, "ok": bool, "seconds": float,
                "error": str | None}`` (``name``/``arguments`` None for an unreadable call;
                ``error`` the text the model read when ``ok`` is False);
    ``tool_s``  the seconds spent running tools in this turn (the sum of ``seconds``).
    """

    messages: list[dict[str, Any]]  # observation: {"role": "tool", "name", "content"} or {"role": "user", ...}
    done: bool
    reward: float | None = None  # this turn's reward, if the environment gives per-turn rewards
    tool_errors: int = 0  # calls that failed (bad arguments, unknown tool, the tool raised)
    info: dict[str, Any] = field(default_factory=dict)


class Environment(ABC):
    """One episode. Subclasses set :attr:`tools` and implement :meth:`step` and :meth:`final_reward`."""

    tools: ClassVar[list[Tool]] = []

    def reset(self, start: EpisodeStart) -> None:
        """A new episode from ``start``."""
        self.start = start

    @abstractmethod
    def step(self, reply: str, calls: list[ToolCall], parse_errors: list[str]) -> StepResult:
        """The model said ``reply``, in which the parser found ``calls`` (and ``parse_errors``: calls
        it could not read, each a message for the model)."""

    @abstractmethod
    def final_reward(self) -> float | None:
        """The episode's reward once it is done (None: the reward worker scores the transcript)."""
