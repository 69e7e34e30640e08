"""The built-in environments: ``arith_tools`` (calculator) and ``code`` (python tool, test cases).

``arith_tools``  Products of 3–4 digit numbers (``asyncrl data arith-tools``), which a small model
                 cannot do in its head but can with the ``calculator`` tool. Final reward: 1.0 when the
                 answer equals the ground truth, where the answer is the last ``#### n`` in the final
                 reply, or else its last number; 0.1 (format credit, as the ``arith`` reward gives) for a
                 ``#### n`` that is wrong; 0.0 otherwise.
``code``         The model writes a stdin/stdout program (``asyncrl data code``); it may try code with
                 the ``python`` tool first. Final reward: the ``code`` reward function
                 (:mod:`reward.code_reward`) of the final reply, so an episode scores as a single-turn
                 sample would: the fraction of the row's test cases (ground truth: tests JSON) that the
                 last ```python block of the reply (else the whole reply) passes in the sandbox (with
                 more time: 5 s per case, 20 s in all, against the reward worker's 2 s and 3.5 s).

Both end the episode on the first reply without tool calls (:class:`envs.tool_env.ToolEnvironment`).
"""

from __future__ import annotations

import re
from typing import ClassVar

from envs.base import Tool
from envs.tool_env import ToolEnvironment
from envs.tools import calculator_tool, python_tool
from reward.functions import ARITH_ANSWER_RE, ARITH_WRONG_ANSWER

_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _same(answer: str, ground_truth: str) -> bool:
    try:
        return float(answer.replace(",", "")) == float(ground_truth)
    except ValueError:
        return answer.strip() == ground_truth.strip()


def arith_tools_score(reply: str, ground_truth: str) -> float:
    """The ``arith_tools`` final reward of ``reply`` (see the module docstring)."""
    marked = ARITH_ANSWER_RE.findall(reply)
    if marked:
        return 1.0 if _same(marked[-1], ground_truth) else ARITH_WRONG_ANSWER
    numbers = _NUMBER_RE.findall(reply)
    return 1.0 if numbers and _same(numbers[-1], ground_truth) else 0.0


class ArithToolsEnv(ToolEnvironment):
    """Multiply with a calculator; reward from the final reply."""

    tools: ClassVar[list[Tool]] = [calculator_tool()]

    def final_reward(self) -> float:
        return arith_tools_score(self.replies[-1] if self.replies else "", self.start.ground_truth)


class CodeEnv(ToolEnvironment):
    """Write a program that passes the row's tests; the python tool runs drafts."""

    tools: ClassVar[list[Tool]] = [python_tool()]
    # The reward worker's code reward must finish under reward.timeout_s (5 s); here the final reward runs
    # in a tool thread under environment.max_tool_time_s (60 s), so a slow machine gets more room.
    case_timeout_s: ClassVar[float] = 5.0
    budget_s: ClassVar[float] = 20.0

    def final_reward(self) -> float:
        from reward.code_reward import code  # imports the sandbox

        return code(self.start.data_source, self.replies[-1] if self.replies else "", self.start.ground_truth,
                    {"code_budget_s": self.budget_s, "code_case_timeout_s": self.case_timeout_s})
