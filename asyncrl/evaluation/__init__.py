"""Evaluation metrics shared by ``asyncrl eval`` and the learner's validation sets (pure Python).

:mod:`~asyncrl.evaluation.metrics` turns per-prompt results (rewards of ``n`` samples, their
extracted answers, a greedy reply's reward) into greedy accuracy, mean@n, unbiased pass@k and
maj@n; :mod:`~asyncrl.evaluation.report` writes them as JSON and a markdown table. Nothing here
imports torch or vLLM.
"""

from asyncrl.evaluation.metrics import (
    CORRECT_AT,
    PromptResult,
    by_data_source,
    default_ks,
    majority_vote,
    pass_at_k,
    sample_seed,
    summarize,
)

__all__ = ["CORRECT_AT", "PromptResult", "by_data_source", "default_ks", "majority_vote", "pass_at_k", "sample_seed",
           "summarize"]
