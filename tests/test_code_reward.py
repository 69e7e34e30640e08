"""The ``code`` reward: the fraction of test cases passed, programs run in the real sandbox (needs root)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import pytest

from reward.code_reward import BUDGET_S, code, extract_program
from reward.functions import REWARD_FUNCTIONS, default_reward_name
from reward.safe_call import SafeRewardCaller
from sandbox import TestCase, parse_tests, run_tests

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox drops privileges: needs root")

# sum of two numbers per line; outputs carry trailing spaces and blank lines the rule ignores
TRUTH = json.dumps({"inputs": ["1 2\n", "10 20\n", "-5 5\n", "7 8\n"], "outputs": ["3  \n", "30\n\n", "0", "15\n"]})
CORRECT = "Here it is:\n```python\na, b = map(int, input().split())\nprint(a + b)\n```\n"
LOOP = "```python\nwhile True:\n    pass\n```"


def test_correct_program_scores_one() -> None:
    assert code("code", CORRECT, TRUTH, {}) == 1.0


def test_half_correct_program_scores_half() -> None:
    half = "```python\na, b = map(int, input().split())\nprint(a + b if a < 7 else a * b)\n```"  # 10 20, 7 8 wrong
    assert code("code", half, TRUTH, {}) == 0.5


def test_infinite_loop_scores_zero_within_the_budget() -> None:
    start = time.monotonic()
    assert code("code", LOOP, TRUTH, {}) == 0.0
    assert time.monotonic() - start < BUDGET_S + 1.5


def test_no_fenced_block_runs_the_whole_response_and_last_block_wins() -> None:
    assert code("code", "a, b = map(int, input().split())\nprint(a + b)", TRUTH, {}) == 1.0
    assert extract_program("```python\nfirst\n```\ntext\n```py\nsecond\n```") == "second\n"


@pytest.mark.parametrize("truth, message", [
    ("not json", "not JSON"),
    ('{"inputs": ["1"]}', "needs 'inputs' and 'outputs'"),
    ('{"inputs": ["1"], "outputs": []}', "same length"),
    ('[{"stdin": "1"}]', "case 0 must be an object with 'stdin' and 'stdout'"),
    ('{"inputs": [1], "outputs": ["1"]}', "input 0 must be a string"),
    ("[]", "no test cases"),
])
def test_malformed_ground_truth_is_a_clear_error(truth: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        code("code", CORRECT, truth, {})


def test_list_layout_and_report() -> None:
    tests = parse_tests(json.dumps([{"stdin": "2 2\n", "stdout": "4"}, {"stdin": "x\n", "stdout": "?"}]))
    assert tests[0] == TestCase("2 2\n", "4")
    report = run_tests(extract_program(CORRECT), tests)
    assert (report.passed, report.total, report.fraction) == (1, 2, 0.5)
    assert report.results[1]["exit_code"] == 1 and "ValueError" in report.results[1]["stderr"]


def test_registered_and_scored_through_the_reward_child() -> None:
    assert REWARD_FUNCTIONS["code"] is code
    assert default_reward_name("codecontests") == "code"
    with SafeRewardCaller(timeout_s=10) as caller:
        results = caller.score_batch([("code", "code", CORRECT, TRUTH, {}), ("code", "code", CORRECT, "{", {})])
    assert results[0] == (1.0, None)
    assert results[1][0] == 0.0 and "not JSON" in (results[1][1] or "")


def _code_cfg(tmp_path: Any, **sections: Any) -> Any:
    from asyncrl.config import validate_config

    return validate_config({"model": {"path": "m"}, "data": {"train": "t"}, "run": {"dir": str(tmp_path)},
                            **sections})


def test_workers_check_the_sandbox_at_start(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reward worker scoring with "code" and a generator whose environment has the python tool run
    one program in the sandbox before anything else; where it cannot run, a ConfigError (exit 2) names
    the key, instead of every sample scoring 0 with an error."""
    from asyncrl.config_base import ConfigError
    from asyncrl.transport.inproc import Hub, InprocTransport
    from reward.worker import RewardWorker
    from rollout.worker import Generator
    from sandbox.runner import NAMESPACES_ENV, preflight

    preflight("here")  # root with namespaces: passes
    cfg = _code_cfg(tmp_path, reward={"function": "code"})
    RewardWorker(cfg, 0, transport=InprocTransport(hub=Hub())).transport.close()
    monkeypatch.setenv(NAMESPACES_ENV, "none")  # as on a machine that refuses namespaces
    with pytest.raises(ConfigError, match='reward.function = "code" runs untrusted code in the sandbox'):
        RewardWorker(cfg, 0)
    gen = Generator(_code_cfg(tmp_path, environment={"name": "code"}), 0)
    with pytest.raises(ConfigError, match="environment.name = 'code' .its tools. runs untrusted code"):
        asyncio.run(gen.start())
    assert gen.engine is None  # failed before building vLLM
