"""Run a program against stdin/stdout test cases, the shape of veRL's and prime-rl's code rewards.

Comparison rule: each output is split into lines, trailing whitespace is stripped from every line and
trailing empty lines are dropped; the program passes a case when the resulting lists are equal. So
``"1 2 \\n3\\n\\n"`` matches ``"1 2\\n3"``, but leading spaces, inner spaces and case still count.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from typing import Any

from sandbox.limits import DEFAULT_LIMITS, Limits
from sandbox.runner import run_python

STDERR_TAIL = 500


@dataclass(frozen=True)
class TestCase:
    __test__ = False  # not a pytest class

    stdin: str
    expected_stdout: str


@dataclass
class TestReport:
    __test__ = False

    passed: int
    total: int
    results: list[dict[str, Any]]  # per case: passed, limit_hit, exit_code, stderr (tail)

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


def normalize(text: str) -> list[str]:
    """The comparison rule of the module docstring."""
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def run_tests(code: str, tests: list[TestCase], limits: Limits = DEFAULT_LIMITS, *,
              budget_s: float | None = None) -> TestReport:
    """Run ``code`` once per case, each in its own sandbox, one after another, and count the passes.

    With ``budget_s`` all cases share that many seconds: each case's wall and CPU limits are cut to what
    is left, and cases that find it spent fail unrun (``limit_hit="timeout"``, stderr says so)."""
    deadline = None if budget_s is None else time.monotonic() + budget_s
    results: list[dict[str, Any]] = []
    for case in tests:
        left = math.inf if deadline is None else deadline - time.monotonic()
        if left <= 0:
            results.append({"passed": False, "limit_hit": "timeout", "exit_code": None,
                            "stderr": "not run: the time budget of the test cases was spent"})
            continue
        case_limits = replace(limits, timeout_s=min(limits.timeout_s, left), cpu_s=min(limits.cpu_s, left))
        result = run_python(code, stdin=case.stdin, limits=case_limits)
        passed = result.ok and normalize(result.stdout) == normalize(case.expected_stdout)
        results.append({"passed": passed, "limit_hit": result.limit_hit, "exit_code": result.exit_code,
                        "stderr": result.stderr[-STDERR_TAIL:]})
    return TestReport(passed=sum(bool(r["passed"]) for r in results), total=len(tests), results=results)


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):  # some sets store lines
        return "\n".join(value)
    raise ValueError(f"code ground truth: {where} must be a string, got {type(value).__name__}")


def parse_tests(ground_truth: str) -> list[TestCase]:
    """Test cases from a JSON ground truth: ``{"inputs": [...], "outputs": [...]}`` (veRL/prime layout) or a
    list of ``{"stdin": ..., "stdout": ...}``. Raises ValueError saying what is wrong."""
    try:
        data = json.loads(ground_truth)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"code ground truth is not JSON ({exc}): {str(ground_truth)[:80]!r}") from None
    if isinstance(data, dict):
        if "inputs" not in data or "outputs" not in data:
            raise ValueError(f"code ground truth: the object needs 'inputs' and 'outputs' lists, has keys "
                             f"{sorted(data)}")
        inputs, outputs = data["inputs"], data["outputs"]
        if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
            raise ValueError("code ground truth: 'inputs' and 'outputs' must be lists of the same length")
        pairs = list(zip(inputs, outputs, strict=True))
    elif isinstance(data, list):
        pairs = []
        for i, case in enumerate(data):
            if not isinstance(case, dict) or "stdin" not in case or "stdout" not in case:
                raise ValueError(f"code ground truth: case {i} must be an object with 'stdin' and 'stdout'")
            pairs.append((case["stdin"], case["stdout"]))
    else:
        raise ValueError(f"code ground truth must be a JSON object or list, got {type(data).__name__}")
    if not pairs:
        raise ValueError("code ground truth has no test cases")
    return [TestCase(_text(i, f"input {n}"), _text(o, f"output {n}")) for n, (i, o) in enumerate(pairs)]
