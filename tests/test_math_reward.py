"""The ``math`` reward: boxed-answer extraction, math-verify equivalence, the fallback, and containment."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import reward.math_reward as mr
from reward.functions import default_reward_name, get_reward_fn
from reward.math_reward import fallback_equivalent, last_boxed_answer, math_score, normalize
from reward.safe_call import SafeRewardCaller


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (r"so the answer is $\boxed{42}$.", "42"),
        (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),  # nested braces
        (r"\boxed{\left\{ 1, 2 \right\}}", r"\left\{ 1, 2 \right\}"),  # escaped braces do not count
        (r"first \boxed{1}, then corrected: \boxed{2}", "2"),  # the last box counts
        (r"\boxed{1} and finally \fbox{7}", "7"),
        (r"The answer is \boxed 5.", "5"),  # \boxed without braces: the next token
        (r"$\boxed {x = 3}$", "x = 3"),
        (r"\boxed{3", None),  # unbalanced
        (r"\boxed{}", None),
        (r"\boxedanswer{3}", None),  # another command, not \boxed
        ("The answer is 3.", None),
    ],
)
def test_last_boxed_answer(text: str, answer: str | None) -> None:
    assert last_boxed_answer(text) == answer


@pytest.mark.parametrize(
    ("boxed", "truth"),
    [
        (r"\frac{1}{2}", "0.5"),
        ("0.5", r"\frac{1}{2}"),
        ("1/2", r"\frac{1}{2}"),
        (r"\dfrac{1}{2}", r"\frac12"),
        ("3.0", "3"),
        ("x=3", "3"),
        (r"90^\circ", "90"),
        (r"10\text{ cm}", "10"),
        ("1,000", "1000"),
        (r"\left( 1, 2 \right)", "(1,2)"),
        (r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2"),
        ("2x+1", "1+2x"),  # only math-verify sees this one
        (r"\{1,2\}", r"\{2,1\}"),
    ],
)
def test_math_equivalent_answers_score_1(boxed: str, truth: str) -> None:
    assert math_score("math", rf"Some working... \boxed{{{boxed}}}", truth, {}) == 1.0


@pytest.mark.parametrize(
    ("response", "truth"),
    [
        (r"\boxed{4}", "3"),
        (r"\boxed{\frac{1}{3}}", "0.5"),
        (r"\boxed{\pi}", "3.14"),
        (r"\boxed{2x+2}", "2x+1"),
        ("The answer is 3.", "3"),  # no box: 0
        (r"\boxed{3", "3"),
    ],
)
def test_math_wrong_or_missing_answers_score_0(response: str, truth: str) -> None:
    assert math_score("math", response, truth, {}) == 0.0


def test_boxed_ground_truth_and_registry() -> None:
    assert math_score("math", r"\boxed{6}", r"So $2 \cdot 3 = \boxed{6}$.", {}) == 1.0
    assert get_reward_fn("math") is math_score
    for source in ("lighteval/MATH", "DigitalLearningGmbH/MATH-lighteval", "HuggingFaceH4/MATH-500", "math"):
        assert default_reward_name(source) == "math"


def test_normalizer_and_numeric_fallback() -> None:
    assert normalize(r" \left( \dfrac{1}{2} \right) ") == r"(\frac{1}{2})"
    assert normalize(r"\text{(B)}") == "(B)"
    assert normalize(r"\$5.") == "5" and normalize(".5") == "0.5" and normalize("k = 7") == "7"
    assert fallback_equivalent(r"\frac{1}{2}", "0.5") and fallback_equivalent("1/2", "0.50")
    assert fallback_equivalent("-\\frac{3}{4}", "-0.75") and fallback_equivalent("3", "3.0")
    assert not fallback_equivalent("2x+1", "1+2x") and not fallback_equivalent(r"\frac{1}{0}", "1")


def test_fallback_used_when_math_verify_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken_parse(*args: object, **kwargs: object) -> list:
        calls.append(args)
        raise RuntimeError("math-verify broke")

    monkeypatch.setattr(mr.math_verify, "parse", broken_parse)
    assert math_score("math", r"\boxed{\frac{1}{2}}", "0.5", {}) == 1.0  # numeric fallback
    assert math_score("math", r"\boxed{0.25}", "1/4", {}) == 1.0
    assert math_score("math", r"\boxed{0.3}", "1/4", {}) == 0.0
    assert math_score("math", r"\boxed{2x+1}", "1+2x", {}) == 0.0  # the fallback cannot do algebra
    assert calls, "math-verify was not tried first"
    monkeypatch.undo()

    def broken_verify(*args: object, **kwargs: object) -> bool:
        raise ValueError("comparison failed")

    monkeypatch.setattr(mr.math_verify, "verify", broken_verify)
    assert math_score("math", r"\boxed{\dfrac{3}{6}}", "0.5", {}) == 1.0
    monkeypatch.setattr(mr, "math_verify", None)  # as if not installed
    assert math_score("math", r"\boxed{1/2}", r"\frac{2}{4}", {}) == 1.0


def test_math_verify_works_off_the_main_thread() -> None:
    # signal.alarm is main-thread only; elsewhere math-verify must run without its own timeout.
    results: list[float] = []
    thread = threading.Thread(target=lambda: results.append(math_score("math", r"\boxed{2x+1}", "1+2x", {})))
    thread.start()
    thread.join(30)
    assert results == [1.0]


HANG_PATCH = '''
import time
import math_verify


def install(data_source, response, ground_truth, extra_info):
    """Make math-verify hang in this (child) process, beyond its own signal timeout."""
    math_verify.parse = lambda *args, **kwargs: time.sleep(3600)
    return 0.0
'''


def test_math_through_safe_caller_and_hang_is_contained(tmp_path: Path) -> None:
    patch = tmp_path / "hang_math_verify.py"
    patch.write_text(HANG_PATCH)
    with SafeRewardCaller(timeout_s=2.0) as caller:
        # Signal-based timeouts work in the child's main thread: math-verify itself decides these.
        assert caller.score("math", "math", r"\boxed{2x+1}", "1+2x", {}) == (1.0, None)
        assert caller.score("math", "HuggingFaceH4/MATH-500", r"\boxed{\dfrac{1}{2}}", "0.5", {}) == (1.0, None)
        assert caller.score("math", "math", r"\boxed{7}", "3", {}) == (0.0, None)
        t0 = time.monotonic()
        results = caller.score_batch([
            (f"{patch}:install", "math", "", "", {}),
            ("math", "math", r"\boxed{\frac{1}{2}}", "0.5", {}),  # hangs inside math-verify
            ("math", "math", r"\boxed{2x+1}", "1+2x", {}),  # a fresh child, unpatched
        ])
        assert time.monotonic() - t0 < 15
        assert results[0] == (0.0, None) and results[2] == (1.0, None)
        assert results[1][0] == 0.0 and "math timed out" in results[1][1]
        assert caller.restarts == 1
