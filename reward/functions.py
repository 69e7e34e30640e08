"""Rule-based reward functions, looked up by name.

Every function has the signature ``(data_source, response, ground_truth, extra_info) ->
float`` (or a veRL-style dict with a ``"score"``). :data:`REWARD_FUNCTIONS` maps names to
functions (``math`` lives in :mod:`reward.math_reward`); :func:`get_reward_fn` also
accepts user functions as ``"package.module:function"`` or ``"path/to/file.py:function"``
(checked to accept those four positional arguments), and :func:`default_reward_name`
picks a function from a row's ``data_source`` as veRL does.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from asyncrl.plugins import PluginKind, load_plugin
from reward.code_reward import code
from reward.math_reward import math_score

RewardFn = Callable[[str, str, str, dict[str, Any]], float]

# veRL's gsm8k scorer (verl/utils/reward_score/gsm8k.py, "strict" method): only the last
# 300 characters are searched, the last "#### <number>" counts, commas and "$" are
# stripped, and the result must equal the ground truth string. No format score.
GSM8K_CLIP_CHARS = 300
GSM8K_ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
GSM8K_CORRECT = 1.0
GSM8K_FORMAT_SCORE = 0.0

# arith: the same extraction, but any whitespace may follow "####", and the answer is
# compared as a number (so "12.0" matches "12").
ARITH_ANSWER_RE = re.compile(r"####\s*(\-?[0-9\.\,]+)")
ARITH_CORRECT = 1.0
"""Reward for a correct final ``#### n``."""
ARITH_WRONG_ANSWER = 0.1
"""Partial credit for a ``#### n`` that is present but wrong: it rewards the format."""
ARITH_RIGHT_NUMBER_NO_FORMAT = 0.2
"""Partial credit when no ``#### n`` appears but the last number in the reply is right.

SmolLM2-135M often states the right sum without the ``####`` format (see README); this
gives GRPO groups a gradient toward correctness before the format is learned."""
ARITH_NO_ANSWER = 0.0
"""Reward when no ``#### n`` appears and the last number (if any) is wrong."""
_NUMBER_RE = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?")


class UnknownRewardError(KeyError):
    """No reward function by that name; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would show repr(message), quotes and all
        return str(self.args[0]) if self.args else ""


def _last_answer(pattern: re.Pattern[str], response: str) -> str | None:
    found = pattern.findall(response[-GSM8K_CLIP_CHARS:])
    return found[-1].replace(",", "").replace("$", "") if found else None


def gsm8k(data_source: str, response: str, ground_truth: str, extra_info: dict[str, Any]) -> float:
    """veRL's strict GSM8K score: 1.0 if the last ``#### n`` equals ``ground_truth``, else 0.0."""
    answer = _last_answer(GSM8K_ANSWER_RE, response)
    if answer is None:
        return 0.0
    return GSM8K_CORRECT if answer == ground_truth else GSM8K_FORMAT_SCORE


def arith(data_source: str, response: str, ground_truth: str, extra_info: dict[str, Any]) -> float:
    """1.0 for a numerically correct last ``#### n``, 0.1 for a wrong one; without any
    ``#### n``, 0.2 if the last number in the reply is right, else 0.0."""
    answer = _last_answer(ARITH_ANSWER_RE, response)
    if answer is None:
        numbers = _NUMBER_RE.findall(response[-GSM8K_CLIP_CHARS:])
        if numbers and _same_number(numbers[-1].replace(",", ""), ground_truth):
            return ARITH_RIGHT_NUMBER_NO_FORMAT
        return ARITH_NO_ANSWER
    return ARITH_CORRECT if _same_number(answer, ground_truth) else ARITH_WRONG_ANSWER


def _same_number(answer: str, ground_truth: str) -> bool:
    try:
        return float(answer) == float(ground_truth)
    except ValueError:  # "1.2.3" or a non-numeric ground truth: compare as text
        return answer == ground_truth.strip()


def toy_digits(data_source: str, response: str, ground_truth: str, extra_info: dict[str, Any]) -> float:
    """Fraction of non-whitespace response characters that are ASCII digits (0.0 if none).

    A reward a tiny random model can learn quickly; for tests, not for real tasks.
    """
    chars = [c for c in response if not c.isspace()]
    return sum(c in "0123456789" for c in chars) / len(chars) if chars else 0.0


REWARD_FUNCTIONS: dict[str, RewardFn] = {
    "gsm8k": gsm8k,
    "math": math_score,
    "arith": arith,
    "toy_digits": toy_digits,
    "code": code,
}

# veRL's verl/utils/reward_score/__init__.py::default_compute_score routes these the same way.
MATH_DATA_SOURCES = ("lighteval/MATH", "DigitalLearningGmbH/MATH-lighteval", "HuggingFaceH4/MATH-500", "math")
CODE_DATA_SOURCES = ("code", "codecontests", "deepmind/code_contests", "apps", "codeforces", "taco")
DEFAULT_BY_DATA_SOURCE = {
    "openai/gsm8k": "gsm8k",
    "gsm8k": "gsm8k",
    "arith": "arith",
    "arith_tools": "arith",  # the same answer check when the set runs without its environment (single-turn)
    **{source: "math" for source in MATH_DATA_SOURCES},
    "aime": "math",  # `asyncrl data aime`: integer answers, boxed like MATH's
    **{source: "code" for source in CODE_DATA_SOURCES},
}


def default_reward_name(data_source: str) -> str:
    """The registry name of the reward function for rows with this ``data_source``."""
    try:
        return DEFAULT_BY_DATA_SOURCE[data_source]
    except KeyError:
        raise UnknownRewardError(
            f"no default reward function for data_source {data_source!r} (known: "
            f"{', '.join(sorted(DEFAULT_BY_DATA_SOURCE))}); set the reward function name explicitly"
        ) from None


_KIND = PluginKind("reward function", "function", "function", inspect.isfunction, UnknownRewardError)


def get_reward_fn(name: str) -> RewardFn:
    """A registered function by name, or a user function ``"module:function"`` or ``"file.py:function"``.

    Raises :class:`UnknownRewardError` naming the module or file and the function when it
    cannot be loaded (:mod:`asyncrl.plugins`), is not callable, or cannot take
    ``(data_source, response, ground_truth, extra_info)`` positionally.
    """
    fn = load_plugin(name, REWARD_FUNCTIONS, _KIND)
    if name not in REWARD_FUNCTIONS:
        _check_signature(fn, name)
    return fn


def _check_signature(fn: Any, name: str) -> None:
    if not callable(fn):
        raise UnknownRewardError(f"reward function {name!r} is not callable (it is a {type(fn).__name__})")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: trust them
        return
    try:
        signature.bind("data_source", "response", "ground_truth", {})
    except TypeError as exc:
        raise UnknownRewardError(
            f"reward function {name!r} has signature {signature}, but must accept 4 positional arguments "
            f"(data_source, response, ground_truth, extra_info): {exc}"
        ) from None
