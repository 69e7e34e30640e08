"""Validation sets and their metrics (rank 0): what :meth:`Orchestrator.validate` queues and logs.

``data.test`` is the unnamed set: greedy, one reply per prompt, logged as ``val_accuracy`` /
``val_reward_mean`` (and the tool-use keys of multi-turn runs). Each ``[[data.val]]`` set has its
own ``n`` and temperature and is logged under ``val/<name>/``: ``accuracy`` (replies earning the
full reward), ``mean@<n>``, ``pass@<k>`` for k = 1, 2, 4, ... <= n, and ``maj@<n>`` where the
reward extracts answers, the same functions as ``asyncrl eval`` (:mod:`asyncrl.evaluation`)::

    results = orch.run_validation()          # the scored groups of every set (for dumps)
    record |= validation_metrics(results, cfg.reward.function, multi_turn=False)
"""

from __future__ import annotations

from dataclasses import dataclass

from asyncrl.evaluation import CORRECT_AT, PromptResult, default_ks, summarize
from asyncrl.transport.items import ScoredGroup
from learner.orchestrator.dispatcher import TokenizedPrompt


@dataclass
class ValSet:
    """Prompts scored at each validation; ``name`` None is ``data.test`` (the ``val_*`` keys)."""

    name: str | None
    prompts: list[TokenizedPrompt]
    n: int = 1
    temperature: float = 0.0
    max_tokens: int | None = None  # None: sampling.max_new_tokens


@dataclass
class ValidationResult:
    """One set's scored groups, one per prompt, in the set's prompt order."""

    set: ValSet
    groups: list[ScoredGroup]

    def prompt_results(self, reward_function: str | None) -> list[PromptResult]:
        """Per-prompt rewards and extracted answers (the reward worker's choice of reward)."""
        from reward.answers import extract_answers  # the rewards' own extraction (regexes, no heavy imports)

        out = []
        for g in self.groups:
            keep = ~g.is_baseline
            texts = [t for t, k in zip(g.batch.column("response_text").to_pylist(), keep) if k]
            ds = g.batch.column("data_source")[0].as_py()
            out.append(PromptResult(g.prompt_id, ds, [float(r) for r in g.rewards],
                                    extract_answers(reward_function, ds, texts)))
        return out


def legacy_metrics(groups: list[ScoredGroup], multi_turn: bool) -> dict[str, float]:
    """``data.test``'s keys: greedy reward mean and accuracy (tool use for episodes)."""
    rewards = [float(g.rewards[0]) for g in groups]
    out = {"val_reward_mean": sum(rewards) / len(rewards),
           "val_accuracy": sum(r >= CORRECT_AT for r in rewards) / len(rewards),
           "val_policy_version_min": min(g.policy_version for g in groups)}
    if multi_turn:  # how the greedy episodes used the tools
        stats = [g.episode_stats() for g in groups]
        calls = [int(s["num_tool_calls"][0]) for s in stats]
        out |= {"val_tool_call_rate": sum(c > 0 for c in calls) / len(calls),
                "val_tool_calls_mean": sum(calls) / len(calls),
                "val_tool_errors_mean": sum(int(s["tool_errors"][0]) for s in stats) / len(stats),
                "val_turns_mean": sum(int(s["num_turns"][0]) for s in stats) / len(stats)}
    return out


def set_metrics(result: ValidationResult, reward_function: str | None) -> dict[str, float]:
    """``val/<name>/...`` keys of one named set."""
    name, n = result.set.name, result.set.n
    m = summarize(result.prompt_results(reward_function), default_ks(n))
    out = {"accuracy": m["pass@1"], f"mean@{n}": m[f"mean@{n}"], **{f"pass@{k}": m[f"pass@{k}"] for k in default_ks(n)},
           "policy_version_min": float(min(g.policy_version for g in result.groups))}
    if m[f"maj@{n}"] is not None:
        out[f"maj@{n}"] = m[f"maj@{n}"]
    return {f"val/{name}/{k}": v for k, v in out.items()}


def validation_metrics(results: list[ValidationResult], reward_function: str | None,
                       multi_turn: bool = False) -> dict[str, float]:
    """Every set's keys: ``val_*`` for ``data.test``, ``val/<name>/*`` for the named sets."""
    out: dict[str, float] = {}
    for r in results:
        if not r.groups:
            continue
        out |= legacy_metrics(r.groups, multi_turn) if r.set.name is None else set_metrics(r, reward_function)
    return out
