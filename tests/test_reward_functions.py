"""Reward functions (veRL gsm8k semantics, arith, toy_digits) and the process-isolated caller."""

from __future__ import annotations

import math
import time

import pytest

from reward.functions import (
    ARITH_WRONG_ANSWER,
    REWARD_FUNCTIONS,
    UnknownRewardError,
    arith,
    default_reward_name,
    get_reward_fn,
    gsm8k,
    toy_digits,
)
from reward.safe_call import SafeRewardCaller

T = "tests.reward_fns_for_tests"


@pytest.mark.parametrize(
    ("response", "truth", "score"),
    [
        ("so the answer is #### 72", "72", 1.0),
        ("#### 72", "73", 0.0),
        ("The answer is 72.", "72", 0.0),  # strict: no ####
        ("#### 1,234", "1234", 1.0),  # commas stripped
        ("#### $1234", "1234", 0.0),  # veRL's regex needs a digit right after '#### '
        ("costs $5 each, so 10 in all. #### 10", "10", 1.0),
        ("#### 5 then corrected #### 7", "7", 1.0),  # the last match counts
        ("#### 5 then corrected #### 7", "5", 0.0),
        ("####72", "72", 0.0),  # veRL requires one space
        ("#### -3", "-3", 1.0),
        ("#### 72.0", "72", 0.0),  # string comparison
        ("#### 72.", "72.", 1.0),
        ("#### 72" + "x" * 300, "72", 0.0),  # outside the last 300 characters
        ("x" * 1000 + "#### 72", "72", 1.0),
    ],
)
def test_gsm8k_matches_verl(response: str, truth: str, score: float) -> None:
    assert gsm8k("openai/gsm8k", response, truth, {}) == score


def test_arith_numeric_compare_and_partial_credit() -> None:
    assert arith("arith", "7 + 5 = 12\n#### 12", "12", {}) == 1.0
    assert arith("arith", "####12.0", "12", {}) == 1.0
    assert arith("arith", "#### 1,000", "1000", {}) == 1.0
    assert arith("arith", "#### -4", "-4", {}) == 1.0
    assert arith("arith", "#### 13", "12", {}) == ARITH_WRONG_ANSWER == 0.1
    assert arith("arith", "#### 1.2.3", "12", {}) == ARITH_WRONG_ANSWER
    # no "#### n": partial credit only when the last number is right
    assert arith("arith", "12", "12", {}) == 0.2
    assert arith("arith", "7 + 5 = 12. So the answer is 12.", "12", {}) == 0.2
    assert arith("arith", "12 is wrong, it is 13", "12", {}) == 0.0
    assert arith("arith", "no numbers", "12", {}) == 0.0
    assert arith("arith", "#### 12" + " " * 300, "12", {}) == 0.0


def test_toy_digits() -> None:
    assert toy_digits("x", "", "", {}) == 0.0
    assert toy_digits("x", "   \n", "", {}) == 0.0
    assert toy_digits("x", "12 ab", "", {}) == 0.5
    assert toy_digits("x", "1 2 3", "", {}) == 1.0
    assert toy_digits("x", "٣", "", {}) == 0.0  # non-ASCII digits do not count


def test_registry_and_defaults() -> None:
    assert set(REWARD_FUNCTIONS) >= {"gsm8k", "arith", "toy_digits"}
    assert get_reward_fn("gsm8k") is gsm8k
    assert default_reward_name("openai/gsm8k") == default_reward_name("gsm8k") == "gsm8k"
    assert default_reward_name("arith") == "arith"
    with pytest.raises(KeyError, match="unknown reward function 'nope'; known: arith, code, gsm8k, math, toy_digits"):
        get_reward_fn("nope")
    with pytest.raises(UnknownRewardError, match="data_source 'mystery'"):
        default_reward_name("mystery")
    with pytest.raises(UnknownRewardError, match="no_such_module"):
        get_reward_fn("no_such_module:fn")
    assert math.isnan(get_reward_fn(f"{T}:nan")("", "", "", {}))  # module:function loads in-process too


@pytest.fixture(scope="module")
def caller():
    with SafeRewardCaller(timeout_s=1.0) as c:
        yield c


def test_safe_caller_scores_and_reports_errors(caller: SafeRewardCaller) -> None:
    assert caller.score("arith", "arith", "#### 12", "12", {}) == (1.0, None)
    reward, error = caller.score(f"{T}:boom", "x", "r", "g", {})
    assert reward == 0.0 and "RuntimeError: boom from a user reward function" in error
    reward, error = caller.score(f"{T}:nan", "x", "r", "g", {})
    assert reward == 0.0 and "non-finite" in error
    reward, error = caller.score(f"{T}:text", "x", "r", "g", {})
    assert reward == 0.0 and "expected a float" in error
    assert caller.score(f"{T}:verl_dict", "x", "r", "g", {}) == (0.5, None)
    reward, error = caller.score("nope", "x", "r", "g", {})
    assert reward == 0.0 and "unknown reward function 'nope'" in error
    reward, error = caller.score("gsm8k", "x", "r", "g", {"bad": lambda: 0})  # extra_info msgpack cannot encode
    assert reward == 0.0 and "could not send" in error
    assert caller.score("gsm8k", "openai/gsm8k", "#### 3", "3", {}) == (1.0, None)


def test_safe_caller_survives_hang_and_death(caller: SafeRewardCaller) -> None:
    t0 = time.monotonic()
    reward, error = caller.score(f"{T}:hang", "x", "r", "g", {})
    assert reward == 0.0 and "timed out" in error
    assert time.monotonic() - t0 < 5
    assert caller.score("toy_digits", "x", "12ab", "", {}) == (0.5, None)
    reward, error = caller.score(f"{T}:die", "x", "r", "g", {})
    assert reward == 0.0 and "died (exit code 3)" in error
    assert caller.score("toy_digits", "x", "1", "", {}) == (1.0, None)


def test_safe_caller_batch_with_one_hanging_item(caller: SafeRewardCaller) -> None:
    fn = f"{T}:hang_on_x"
    items = [(fn, "x", r, "", {}) for r in ["a", "bb", "x", "dddd", "eeeee"]]
    items.append(("toy_digits", "x", "9", "", {}))
    t0 = time.monotonic()
    results = caller.score_batch(items)
    assert time.monotonic() - t0 < 5  # one timeout, not one per item
    assert [r for r, _ in results] == [1.0, 2.0, 0.0, 4.0, 5.0, 1.0]
    assert [e is None for _, e in results] == [True, True, False, True, True, True]
    assert "timed out" in results[2][1]
    assert caller.score_batch([]) == []


def test_safe_caller_batch_is_one_round_trip_and_fast(caller: SafeRewardCaller) -> None:
    items = [("arith", "arith", f"#### {i}", str(i), {"index": i}) for i in range(2000)]
    t0 = time.monotonic()
    results = caller.score_batch(items)
    assert all(r == (1.0, None) for r in results)
    assert time.monotonic() - t0 < 5


def test_output_flood_is_capped(capfd: pytest.CaptureFixture[str]) -> None:
    """A function printing 10 MB still scores, and at most ~64 KiB of its output gets through."""
    with SafeRewardCaller(timeout_s=10.0) as own:  # started under capfd, so its output is captured
        assert own.score("tests.reward_fns_for_tests:chatty", "x", "r", "1", {}) == (0.25, None)
    out, err = capfd.readouterr()
    assert len(out) + len(err) < 200_000
    assert "output beyond" in out + err
