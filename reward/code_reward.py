"""The ``code`` reward: the fraction of test cases the response's program passes, run in :mod:`sandbox`.

The program is the last fenced block labelled ``python`` (or ``py``/``python3``) in the response, else the
whole response. The ground truth is the tests JSON :func:`sandbox.parse_tests` reads (``{"inputs": [...],
"outputs": [...]}`` or a list of ``{"stdin", "stdout"}``); outputs are compared line by line with trailing
whitespace stripped (:mod:`sandbox.testcases`).

Timing: reward functions already run in a child with a per-sample timeout (``reward.timeout_s``, default
5 s; past it the sample scores 0 with ``reward_error``). So the cases here share one budget,
:data:`BUDGET_S` (3.5 s, below that default), and each case gets :data:`CASE_TIMEOUT_S` or what is left of
the budget, whichever is less; cases that find the budget spent count as failed. A program that loops
forever therefore scores 0.0 in about ``BUDGET_S`` + one sandbox start, never as a reward timeout. With a
larger ``reward.timeout_s``, raise both through ``extra_info`` (``code_budget_s``, ``code_case_timeout_s``).
"""

from __future__ import annotations

import re
from typing import Any

from sandbox import Limits, parse_tests, run_tests

CASE_TIMEOUT_S = 2.0
BUDGET_S = 3.5
MEMORY_MB = 512
_BLOCK_RE = re.compile(r"```(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_program(response: str) -> str:
    """The last ```python block of ``response``, else all of it."""
    blocks = _BLOCK_RE.findall(response)
    return blocks[-1] if blocks else response


def _number(extra_info: dict[str, Any], key: str, default: float) -> float:
    value = (extra_info or {}).get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"code reward: extra_info[{key!r}] must be a positive number, got {value!r}")
    return float(value)


def code(data_source: str, response: str, ground_truth: str, extra_info: dict[str, Any]) -> float:
    """Fraction of the ground truth's test cases passed by the response's program (0.0 to 1.0)."""
    budget = _number(extra_info, "code_budget_s", BUDGET_S)
    case_timeout = _number(extra_info, "code_case_timeout_s", CASE_TIMEOUT_S)
    limits = Limits(timeout_s=case_timeout, cpu_s=case_timeout, memory_mb=MEMORY_MB)
    return run_tests(extract_program(response), parse_tests(ground_truth), limits, budget_s=budget).fraction
