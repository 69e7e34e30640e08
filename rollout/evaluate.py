"""``asyncrl eval``'s engine side: the generator's engine and sampling, the reward worker's scoring.

The engine is :func:`rollout.worker.build_engine` (vLLM AsyncLLM, the config's dtype, placement
and CPU KV-cache sizing), each prompt is a :class:`~asyncrl.transport.items.PromptItem` sampled
with the generator's :func:`~rollout.worker.sampling_params` (``n`` replies, a per-prompt seed)
plus one greedy reply (:func:`~rollout.worker.greedy_params`), and replies are scored by the
reward worker's :class:`~reward.safe_call.SafeRewardCaller` (a child process with a timeout):
the reply a training run would generate and the reward it would get::

    replies = asyncio.run(generate_sets(cfg, {"test": prompts}, on_done=print))
    results = score(replies["test"], RewardChoice(function=None, by_source={}), timeout_s=5.0)
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asyncrl.config import RunConfig
from asyncrl.evaluation import PromptResult, sample_seed
from asyncrl.transport.items import PromptItem
from learner.orchestrator.dispatcher import TokenizedPrompt
from reward.answers import RewardChoice, extract_answers
from reward.safe_call import SafeRewardCaller
from rollout.worker import build_engine, greedy_params, sampling_params, shutdown_engine


@dataclass
class Replies:
    """One prompt's generated texts: ``sampled`` (``n`` of them, in sample order) and ``greedy``."""

    prompt: TokenizedPrompt
    sampled: list[str]
    greedy: str


async def _generate(engine: Any, item: PromptItem, top_p: float, greedy: bool) -> tuple[list[str], str | None]:
    async def run(params: Any, rid: str) -> Any:
        final = None
        async for out in engine.generate({"prompt_token_ids": item.prompt_token_ids}, params, request_id=rid):
            final = out
        assert final is not None and final.finished
        return final

    jobs = [run(sampling_params(item, top_p), f"eval-{item.group_id}")]
    if greedy:
        jobs.append(run(greedy_params(item.max_tokens), f"eval-{item.group_id}-greedy"))
    outs = await asyncio.gather(*jobs)
    texts = [c.text for c in sorted(outs[0].outputs, key=lambda c: c.index)]
    return texts, (outs[1].outputs[0].text if greedy else None)


async def _one(engine: Any, cfg: RunConfig, name: str, gid: int, p: TokenizedPrompt) -> Replies:
    s = cfg.sampling
    greedy = s.temperature > 0  # else the sampled reply is the greedy one
    seed = sample_seed(cfg.run.seed, name, p.prompt_id) if greedy else None
    item = PromptItem(prompt_id=p.prompt_id, group_id=gid, split="val", data_source=p.data_source,
                      ground_truth=p.ground_truth, prompt_token_ids=p.token_ids, n=s.n, temperature=s.temperature,
                      max_tokens=s.max_new_tokens, seed=seed)
    texts, g = await _generate(engine, item, s.top_p, greedy)
    return Replies(p, texts, texts[0] if g is None else g)


async def generate_sets(cfg: RunConfig, sets: dict[str, list[TokenizedPrompt]],
                        on_done: Callable[[str], None]) -> dict[str, list[Replies]]:
    """Every prompt of every set through one engine, all in flight at once (vLLM batches them);
    ``on_done(set name)`` after each prompt. Sampling: ``cfg.sampling`` (n, temperature, top_p,
    max_new_tokens), a seed per (``run.seed``, set, prompt); a greedy reply too unless sampling is
    already greedy (then the sampled reply is the greedy one)."""
    engine = build_engine(cfg, seed=cfg.run.seed)

    async def one(name: str, gid: int, p: TokenizedPrompt) -> Replies:
        r = await _one(engine, cfg, name, gid, p)
        on_done(name)
        return r

    try:
        jobs: dict[str, list] = {}
        for name, prompts in sets.items():
            start = sum(map(len, jobs.values()))
            jobs[name] = [one(name, start + i, p) for i, p in enumerate(prompts)]
        done = await asyncio.gather(*(asyncio.gather(*js) for js in jobs.values()))
        return dict(zip(jobs, done))
    finally:
        shutdown_engine(engine)
        engine = None
        gc.collect()  # AsyncLLM.__del__ shuts down again: run it now, not at exit when vLLM's modules are gone


def score(replies: list[Replies], rewards: RewardChoice, timeout_s: float) -> list[PromptResult]:
    """Each reply's reward (the reward worker's caller: a raising or hung function scores 0) and
    extracted answer."""
    items: list[tuple[str, str, str, str, dict]] = []
    for r in replies:
        name = rewards.name(r.prompt.data_source)
        for text in [*r.sampled, r.greedy]:
            items.append((name, r.prompt.data_source, text, r.prompt.ground_truth, {}))
    caller = SafeRewardCaller(timeout_s=timeout_s)
    try:
        scored = caller.score_batch(items)
    finally:
        caller.close()
    out, i = [], 0
    for r in replies:
        k = len(r.sampled) + 1
        values = [x for x, _ in scored[i:i + k]]
        errors = [e for _, e in scored[i:i + k] if e is not None]
        i += k
        name = rewards.name(r.prompt.data_source)
        answers = extract_answers(name, r.prompt.data_source, [*r.sampled, r.greedy])
        out.append(PromptResult(
            r.prompt.prompt_id, r.prompt.data_source, values[:-1], None if answers is None else answers[:-1],
            greedy_reward=values[-1], greedy_answer=None if answers is None else answers[-1],
            extra={"reward_errors": errors} if errors else {}))
    return out
