"""The final answer of a reply, extracted as the reward functions do, for majority voting (maj@n).

Only the rewards that grade an extracted answer have an extractor: ``gsm8k`` (the last ``#### n``
of the last 300 characters), ``arith`` (the same with any whitespace after ``####``; compared as
numbers, so ``12.0`` votes with ``12``) and ``math`` (the last ``\\boxed{}``, normalised as the math
reward normalises it, so ``\\dfrac12`` votes with ``\\frac{1}{2}``). Those rewards score a reply by
that answer alone, which is what lets :func:`asyncrl.evaluation.majority_vote` grade the majority
answer with the reward of one of its replies::

    extract_answers("gsm8k", "gsm8k", ["... #### 72", "no answer"])  # ['72', None]
    extract_answers("toy_digits", "arith", ["7"])                   # None: no extractor
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reward.functions import ARITH_ANSWER_RE, GSM8K_ANSWER_RE, UnknownRewardError, _last_answer, default_reward_name
from reward.math_reward import last_boxed_answer, normalize

Extractor = Callable[[str], "str | None"]


def _gsm8k(response: str) -> str | None:
    return _last_answer(GSM8K_ANSWER_RE, response)


def _arith(response: str) -> str | None:
    answer = _last_answer(ARITH_ANSWER_RE, response)
    if answer is None:
        return None
    try:
        value = float(answer)
    except ValueError:  # "1.2.3": votes as written
        return answer
    return str(int(value)) if value.is_integer() else repr(value)


def _math(response: str) -> str | None:
    answer = last_boxed_answer(response)
    return None if answer is None else normalize(answer) or answer


EXTRACTORS: dict[str, Extractor] = {"gsm8k": _gsm8k, "arith": _arith, "math": _math}


def reward_name(function: str | None, data_source: str) -> str | None:
    """The reward a reward worker uses for ``data_source`` (``function`` forces one); None when the
    source has no default."""
    if function is not None:
        return function
    try:
        return default_reward_name(data_source)
    except UnknownRewardError:
        return None


def extract_answers(function: str | None, data_source: str, responses: Sequence[str]) -> list[str | None] | None:
    """Each reply's answer under the reward ``function`` (None: by ``data_source``, as the reward
    worker picks it); None when that reward has no extractor."""
    name = reward_name(function, data_source)
    fn = EXTRACTORS.get(name) if name is not None else None
    return None if fn is None else [fn(r) for r in responses]


@dataclass
class RewardChoice:
    """Which reward scores a row: ``function`` for every row, else ``by_source[data_source]``, else the
    reward worker's default for the row's ``data_source``."""

    function: str | None
    by_source: dict[str, str]

    def name(self, data_source: str) -> str:
        return self.function or self.by_source.get(data_source) or default_reward_name(data_source)
