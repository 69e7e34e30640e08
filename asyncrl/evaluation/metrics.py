"""Greedy accuracy, mean@n, unbiased pass@k and maj@n over per-prompt results.

A reply is *correct* when it earns the full reward (``reward >= 1.0``), the rule of the
learner's ``val_accuracy``. For each prompt with ``n`` sampled replies of which ``c`` are correct,
pass@k is Chen et al. (2021)'s unbiased estimator ``1 - C(n-c, k) / C(n, k)`` in its numerically
stable product form; a set's pass@k is the mean over its prompts (so pass@1 is the fraction of
correct replies). maj@n votes over the replies' extracted answers (:func:`majority_vote`)::

    r = PromptResult(prompt_id=0, data_source="gsm8k", rewards=[1.0, 0.0, 1.0, 0.0],
                     answers=["4", "5", "4", None], greedy_reward=1.0)
    summarize([r], ks=[1, 2, 4])
    # {'prompts': 1, 'n': 4, 'greedy_accuracy': 1.0, 'greedy_reward_mean': 1.0, 'mean@4': 0.5,
    #  'pass@1': 0.5, 'pass@2': 0.8333..., 'pass@4': 1.0, 'maj@4': 1.0, 'no_answer': []}
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

CORRECT_AT = 1.0
"""A reply is correct when its reward is at least this (the full reward)."""


@dataclass
class PromptResult:
    """One prompt's replies: ``rewards`` of the ``n`` sampled ones in sample order, ``answers`` the
    answer extracted from each (None where a reply has none; the whole list None when the reward
    function has no answer extractor), ``greedy_reward`` the greedy reply's (None: not generated)."""

    prompt_id: int
    data_source: str
    rewards: list[float]
    answers: list[str | None] | None = None
    greedy_reward: float | None = None
    greedy_answer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. reply texts, for dumps; not read here

    def correct(self, at: float = CORRECT_AT) -> int:
        return sum(r >= at for r in self.rewards)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt with ``c`` correct among ``n`` replies: ``1 - C(n-c, k)/C(n, k)``,
    computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` (no huge binomials)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def default_ks(n: int) -> list[int]:
    """``1, 2, 4, ...`` up to ``n``, and ``n`` itself."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks if ks[-1] == n else ks + [n]


def majority_vote(answers: Sequence[str | None], rewards: Sequence[float]) -> tuple[str | None, float | None]:
    """The most frequent extracted answer and its grade (the reward of its first reply: the
    built-in rewards score a reply by its extracted answer alone). Replies without an answer do
    not vote; a tie goes to the answer that appeared first. ``(None, None)``: no reply has one."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, None
    best = max(counts.values())
    winner = next(a for a in answers if a is not None and counts[a] == best)
    return winner, float(rewards[answers.index(winner)])


def summarize(results: Sequence[PromptResult], ks: Sequence[int], at: float = CORRECT_AT) -> dict[str, Any]:
    """The metrics of one set of prompts (all with the same number of replies ``n``):

    ``prompts``, ``n``, ``greedy_accuracy`` / ``greedy_reward_mean`` (None without greedy replies),
    ``mean@n`` (mean reward of the sampled replies), ``pass@k`` for each k, ``maj@n`` (None when
    the reward has no answer extractor; a prompt whose replies have no answer counts as wrong) and
    ``no_answer`` (ids of those prompts)."""
    if not results:
        raise ValueError("no prompt results to summarize")
    n = len(results[0].rewards)
    odd = [r.prompt_id for r in results if len(r.rewards) != n]
    if n < 1 or odd:
        raise ValueError(f"every prompt needs the same number (>= 1) of replies: {n} for prompt "
                         f"{results[0].prompt_id}, other counts for prompts {odd[:5]}")
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ValueError(f"pass@k needs 1 <= k <= n={n}, got k={bad}")
    out: dict[str, Any] = {"prompts": len(results), "n": n}
    greedy = [r.greedy_reward for r in results if r.greedy_reward is not None]
    has_greedy = len(greedy) == len(results)
    out["greedy_accuracy"] = _mean([g >= at for g in greedy]) if has_greedy else None
    out["greedy_reward_mean"] = _mean(greedy) if has_greedy else None
    out[f"mean@{n}"] = _mean([x for r in results for x in r.rewards])
    for k in ks:
        out[f"pass@{k}"] = _mean([pass_at_k(n, r.correct(at), k) for r in results])
    out[f"maj@{n}"], out["no_answer"] = _maj(results, at)
    return out


def _maj(results: Sequence[PromptResult], at: float) -> tuple[float | None, list[int]]:
    if any(r.answers is None for r in results):
        return None, []
    votes, no_answer = [], []
    for r in results:
        assert r.answers is not None
        _, grade = majority_vote(r.answers, r.rewards)
        if grade is None:
            no_answer.append(r.prompt_id)
        votes.append(grade is not None and grade >= at)
    return _mean(votes), no_answer


def by_data_source(results: Sequence[PromptResult]) -> dict[str, list[PromptResult]]:
    """The results grouped by ``data_source``, sources in order of first appearance."""
    out: dict[str, list[PromptResult]] = {}
    for r in results:
        out.setdefault(r.data_source, []).append(r)
    return out


def sample_seed(seed: int, scope: str, prompt_id: int) -> int:
    """A 31-bit sampling seed for one prompt of an evaluation (``scope``: the set's name), so its
    replies do not depend on batching, on which generator serves it, or on when it runs."""
    return random.Random(f"{seed}/{scope}/{prompt_id}").getrandbits(31)


def _mean(values: Sequence[float | bool]) -> float:
    return sum(float(v) for v in values) / len(values)
