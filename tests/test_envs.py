"""Environments (envs/): the calculator, ToolEnvironment.step's error observations, the registry's
start-up checks and the built-in environments, scored for real (the code environment in the sandbox)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import ClassVar

import pytest

from envs.base import EpisodeStart, Tool, ToolCall
from envs.builtin import ArithToolsEnv, CodeEnv, arith_tools_score
from envs.registry import ENVIRONMENTS, EnvironmentLoadError, load_environment
from envs.tool_env import ToolEnvironment, check_arguments
from envs.tools import MAX_DIGITS, CalculatorError, calculate, calculator, calculator_tool, python_tool


def test_calculator_arithmetic() -> None:
    assert calculator("1234 * 5678") == "7006652"
    assert calculator("(2 + 3) * -4 ** 2 // 3 % 7") == str((2 + 3) * -4 ** 2 // 3 % 7)
    assert calculator("10 / 4") == "2.5" and calculator("10 / 2") == "5" and calculator("-(-3)") == "3"
    assert calculator("2 ** -2") == "0.25" and calculate("7 // 2") == 3


@pytest.mark.parametrize(("expression", "message"), [
    ("9**9**9", "exponent 387420489 is too large"),
    ("10**10**10", "exponent 10000000000 is too large"),
    ("7 ** 200", f"more than {MAX_DIGITS} digits"),
    ("9" * 101, f"more than {MAX_DIGITS} digits"),
    ("10.0 ** 400", "more than"),
    ("(10**60) * (10**60)", f"more than {MAX_DIGITS} digits"),
    ("1 / 0", "division by zero"),
    ("(-8) ** 0.5", "not a real number"),
    ("x + 1", "names are not allowed"),
    ("__import__('os').system('id')", "function calls are not allowed"),
    ("(1).__class__", "attributes are not allowed"),
    ("'a' * 3", "only numbers are allowed"),
    ("True + 1", "only numbers are allowed"),
    ("1 << 2", "operator '<<' is not allowed"),
    ("[1, 2]", "List expressions are not allowed"),
    ("1 +", "cannot parse"),
    ("", "expression is empty"),
    ("1+" * 200 + "1", "the limit is 300"),
])
def test_calculator_refuses_hostile_input_quickly(expression: str, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(CalculatorError, match=message.replace("(", r"\(").replace(")", r"\)")):
        calculator(expression)
    assert time.perf_counter() - started < 0.1


class Toolbox(ToolEnvironment):
    tools: ClassVar[list[Tool]] = [
        calculator_tool(),
        Tool("repeat", "repeat a word", {"type": "object", "properties": {"word": {"type": "string"},
                                                                          "times": {"type": "integer"}},
                                         "required": ["word"]}, lambda word, times=2: word * times),
        Tool("boom", "always fails", {"type": "object", "properties": {}}, lambda: str(1 / 0)),
    ]
    max_calls_per_turn = 9

    def final_reward(self) -> float:
        return float(len(self.replies))


def test_tool_environment_runs_calls_and_turns_failures_into_counted_observations() -> None:
    env = Toolbox()
    env.reset(EpisodeStart(0, "t", "1"))
    calls = [ToolCall("calculator", {"expression": "12 * 12"}, id="a"), ToolCall("nope", {}),
             ToolCall("repeat", {}), ToolCall("repeat", {"word": "ab", "times": "3"}),
             ToolCall("repeat", {"word": "ab", "times": True}), ToolCall("repeat", {"word": "ab", "loud": 1}),
             ToolCall("boom", {}), ToolCall("repeat", {"word": "ab", "times": 3}),
             ToolCall("calculator", {"expression": "9**9**9"})]
    result = env.step("reply 1", calls, ["tool call 10: invalid JSON at line 1 column 2: Expecting value"])
    assert not result.done and result.tool_errors == 8
    texts = [m["content"] for m in result.messages]
    assert texts[0] == "144" and result.messages[0] == {"role": "tool", "name": "calculator", "content": "144",
                                                        "tool_call_id": "a"}
    assert texts[1] == "error: unknown tool 'nope'; the tools are 'calculator', 'repeat', 'boom'"
    assert texts[2] == "error: repeat: missing required argument(s) 'word'"
    assert texts[3] == "error: repeat: argument 'times' must be integer, got str '3'"
    assert texts[4] == "error: repeat: argument 'times' must be integer, got bool True"
    assert texts[5] == "error: repeat: unknown argument(s) 'loud'; it takes 'word', 'times'"
    assert texts[6] == "error: division by zero" and texts[7] == "ababab"
    assert texts[8].startswith("error: exponent 387420489 is too large")
    assert texts[9] == "error: tool call 10: invalid JSON at line 1 column 2: Expecting value"
    info = result.info
    assert [c["ok"] for c in info["calls"]] == [True] + [False] * 6 + [True, False, False]
    assert info["calls"][0] == {"name": "calculator", "arguments": {"expression": "12 * 12"}, "ok": True,
                                "seconds": info["calls"][0]["seconds"], "error": None}
    assert info["calls"][9]["name"] is None
    assert info["tool_s"] == pytest.approx(sum(c["seconds"] for c in info["calls"]))
    final = env.step("#### 144", [], [])
    assert final.done and final.messages == [] and final.tool_errors == 0 and env.final_reward() == 2.0


def test_too_many_calls_and_long_output_are_capped() -> None:
    env = Toolbox()
    env.reset(EpisodeStart(0, "t", "1"))
    result = env.step("r", [ToolCall("repeat", {"word": "x", "times": 10_000})] * 10, [])
    assert result.tool_errors == 1 and "more than 9 tool calls" in result.messages[9]["content"]
    assert result.messages[0]["content"].endswith("\n... (6000 more characters)")


def test_check_arguments_accepts_numbers_for_number_and_extra_keys_when_allowed() -> None:
    tool = Tool("f", "", {"type": "object", "properties": {"x": {"type": ["number", "null"]}},
                          "additionalProperties": True}, lambda **kw: "")
    assert check_arguments(tool, {"x": 1}) is None and check_arguments(tool, {"x": None, "y": 2}) is None
    assert check_arguments(tool, {"x": "1"}) == "f: argument 'x' must be number or null, got str '1'"


def test_arith_tools_reward() -> None:
    assert arith_tools_score("123 * 456 = 56088. #### 56,088", "56088") == 1.0
    assert arith_tools_score("The product is 56088.", "56088") == 1.0
    assert arith_tools_score("#### 56087", "56088") == 0.1
    assert arith_tools_score("56088 is close to 56087", "56088") == 0.0 and arith_tools_score("", "1") == 0.0
    env = load_environment("arith_tools")()
    env.reset(EpisodeStart(3, "arith_tools", "56088", [{"role": "user", "content": "What is 123 * 456?"}]))
    step = env.step("", [ToolCall("calculator", {"expression": "123*456"})], [])
    assert step.messages[0]["content"] == "56088" and not step.done
    assert env.step("#### 56088", [], []).done and env.final_reward() == 1.0


def test_code_environment_scores_the_last_python_block_in_the_sandbox() -> None:
    tests = json.dumps({"inputs": ["1 2\n", "5 5\n", "0 0\n"], "outputs": ["3\n", "10\n", "0\n"]})
    env = CodeEnv()
    env.reset(EpisodeStart(0, "code", tests))
    tried = env.step("", [ToolCall("python", {"code": "print(sum(map(int, input().split())))", "stdin": "2 3"})], [])
    assert tried.messages[0]["content"] == "exit code: 0\nstdout:\n5\n" and tried.tool_errors == 0
    reply = "Draft:\n```python\nprint(1)\n```\nFinal:\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    assert env.step(reply, [], []).done and env.final_reward() == 1.0
    env.reset(EpisodeStart(0, "code", tests))
    env.step("```python\nprint(3)\n```", [], [])
    assert env.final_reward() == pytest.approx(1 / 3)
    env.reset(EpisodeStart(0, "code", tests))
    env.step("no code here", [], [])
    assert env.final_reward() == 0.0


def test_python_tool_reports_failures_as_output() -> None:
    tool = python_tool(max_chars=50)
    assert tool.fn(code="import sys; sys.exit('bad input')") == "exit code: 1\nstderr:\nbad input\n"
    assert tool.fn(code="print('x' * 80)").endswith("x" * 50 + "\n... (31 more characters)")
    assert python_tool(timeout_s=1.0).fn(code="import time; time.sleep(30)").startswith(
        "exit code: none (the program was killed) (limit hit: timeout)")


USER_ENVS = '''
from typing import ClassVar
from envs.base import Environment, Tool
from envs.tool_env import ToolEnvironment
from envs.tools import calculator_tool


class Good(ToolEnvironment):
    tools: ClassVar[list[Tool]] = [calculator_tool()]

    def final_reward(self):
        return 1.0


class Abstract(Environment):
    def step(self, reply, calls, parse_errors):
        raise NotImplementedError


class NeedsArgs(Good):
    def __init__(self, scale):
        self.scale = scale


class BadTools(Good):
    tools = ["calculator"]


class Twice(Good):
    tools = [calculator_tool(), calculator_tool()]


class NotAnEnv:
    pass


def make_env():
    return Good()
'''


@pytest.fixture()
def user_envs(tmp_path: Path) -> Path:
    path = tmp_path / "my_envs.py"
    path.write_text(USER_ENVS)
    return path


def test_registry_loads_builtins_modules_and_files(user_envs: Path) -> None:
    assert load_environment("arith_tools") is ArithToolsEnv and load_environment("code") is CodeEnv
    assert set(ENVIRONMENTS) == {"arith_tools", "code"}
    assert load_environment("envs.builtin:CodeEnv") is CodeEnv
    good = load_environment(f"{user_envs}:Good")
    assert good.__name__ == "Good" and load_environment(f"{user_envs}:Good") is good  # imported once


@pytest.mark.parametrize(("attr", "message"), [
    ("Abstract", "class Abstract does not implement final_reward"),
    ("NeedsArgs", r"NeedsArgs\(scale\) needs arguments .* built per episode with NeedsArgs\(\)"),
    ("BadTools", r"BadTools.tools must be a list of envs.base.Tool, got \['calculator'\]"),
    ("Twice", "Twice.tools repeats the name.s. calculator"),
    ("NotAnEnv", "class NotAnEnv is not a subclass of envs.base.Environment"),
    ("make_env", "is not a class .it is a function."),
    ("Missing", r"has no class 'Missing' \(classes there: Abstract, BadTools, Good, NeedsArgs, NotAnEnv, Twice\)"),
])
def test_registry_errors_name_the_spec_and_the_problem(user_envs: Path, attr: str, message: str) -> None:
    with pytest.raises(EnvironmentLoadError, match=message) as caught:
        load_environment(f"{user_envs}:{attr}")
    assert f"{user_envs}:{attr}" in str(caught.value) and isinstance(caught.value, ValueError)


def test_registry_errors_for_unknown_names_files_and_modules(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentLoadError, match="unknown environment 'arith'; known: arith_tools, code, or "
                                                   "'package.module:Class' or 'path/to/file.py:Class'"):
        load_environment("arith")
    with pytest.raises(EnvironmentLoadError, match=f"file not found: {tmp_path}/none.py"):
        load_environment(f"{tmp_path}/none.py:Env")
    with pytest.raises(EnvironmentLoadError, match="cannot load environment 'no_such_pkg.envs:Env': "
                                                   "ModuleNotFoundError"):
        load_environment("no_such_pkg.envs:Env")


def test_the_user_environment_in_the_docs_loads_and_plays(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "environments.md").read_text()
    code = next(block for block in doc.split("```python\n")[1:] if block.startswith("# my_env.py"))
    (tmp_path / "my_env.py").write_text(code.split("```")[0])
    square = load_environment(f"{tmp_path}/my_env.py:Square")()
    square.reset(EpisodeStart(0, "squares", "144", [{"role": "user", "content": "What is 12 squared?"}]))
    assert square.step("", [ToolCall("square", {"n": 12})], []).messages[0]["content"] == "144"
    assert square.step("It is 144.", [], []).done and square.final_reward() == 1.0
    guess = load_environment(f"{tmp_path}/my_env.py:Guess")()
    guess.reset(EpisodeStart(1, "guess", "42"))
    assert [guess.step(r, [], []).messages for r in ("50", "I say 10")] == [
        [{"role": "user", "content": "Lower."}], [{"role": "user", "content": "Higher."}]]
    assert guess.step("42", [], []).done and guess.final_reward() == 1.0
