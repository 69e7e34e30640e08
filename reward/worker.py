"""A reward worker: score each trajectory group and forward it to the learner.

PULL on its own ``transport.rewards[index]`` address (generators push to every reward
worker, round-robin), PUSH to the learner's ``transport.trajectories``. Rewards run in a
child process with a timeout (:class:`reward.safe_call.SafeRewardCaller`): a function
that raises, hangs or returns garbage yields 0 with ``reward_error`` set, and the worker
keeps going. Malformed messages are dropped, counted and logged.

Multi-turn episodes (``[environment]``): where the generator filled ``env_reward`` (the
environment's turn rewards plus its final reward), that is the row's reward as it is, whatever
``reward.type`` says; the reward function or model scores only the rows without one (an
environment whose ``final_reward`` returns None), on the whole transcript (``response_text``).
"""

from __future__ import annotations

import logging
import signal
import time

import pyarrow as pa

from asyncrl import schema
from asyncrl.config import RunConfig
from asyncrl.timeline import Timeline
from asyncrl.transport import DropCounter, Transport, make_transport
from asyncrl.transport.items import ScoredGroup
from reward.functions import default_reward_name, get_reward_fn
from reward.safe_call import SafeRewardCaller

log = logging.getLogger("reward")


class RewardWorker:
    def __init__(self, cfg: RunConfig, index: int, transport: Transport | None = None) -> None:
        self.cfg, self.index = cfg, index
        r = cfg.reward
        if r.function is not None:
            get_reward_fn(r.function)  # fail now on an unknown name
        if r.function == "code":
            from sandbox.runner import preflight

            preflight('reward.function = "code"')
        self.caller = SafeRewardCaller(timeout_s=r.timeout_s) if r.type != "model" else None
        self.scorer = None
        if r.type != "function":
            from reward.model_scorer import ModelScorer
            assert r.model_path is not None
            self.scorer = ModelScorer(r.model_path, cfg.model.path, batch_size=r.model_batch_size,
                                      max_tokens=r.model_max_tokens)
        self.drops = DropCounter(f"reward worker {index}")
        self.transport = transport or make_transport(cfg.transport)  # under CURVE the bind starts the ZAP handler
        self.pull = self.transport.pull(cfg.transport.rewards[index])
        self.push = self.transport.push(cfg.transport.trajectories)
        self.scored = self.errors = 0
        self.running = True
        self.timeline = Timeline(cfg.run.dir, f"reward-{index}")  # "score" spans (asyncrl report)

    def fn_name(self, data_source: str) -> str:
        return self.cfg.reward.function or default_reward_name(data_source)

    def score(self, batch: pa.RecordBatch) -> tuple[list[float], list[str | None]]:
        """The environment's reward where the row has one; the rest scored by :meth:`score_rows`."""
        env = batch.column("env_reward")
        if env.null_count == batch.num_rows:
            return self.score_rows(batch)
        rewards: list[float] = env.to_pylist()
        errors: list[str | None] = [None] * batch.num_rows
        todo = [i for i, x in enumerate(rewards) if x is None]
        if todo:
            scored, errs = self.score_rows(batch.take(pa.array(todo)))
            for i, x, e in zip(todo, scored, errs):
                rewards[i], errors[i] = x, e
        return [float(x) for x in rewards], errors

    def score_rows(self, batch: pa.RecordBatch) -> tuple[list[float], list[str | None]]:
        """Function rewards, model scores, or their weighted sum (reward.type)."""
        r = self.cfg.reward
        rewards: list[float] = [0.0] * batch.num_rows
        errors: list[str | None] = [None] * batch.num_rows
        if self.caller is not None:
            rewards, errors = self._function_rewards(self.caller, batch)
            rewards = [r.function_weight * x for x in rewards] if r.type == "mixed" else rewards
        if self.scorer is not None:
            scores = self.scorer.score(batch.column("prompt_token_ids").to_pylist(),
                                       batch.column("response_text").to_pylist())
            w = r.model_weight if r.type == "mixed" else 1.0
            rewards = [x + w * s for x, s in zip(rewards, scores)] if r.type == "mixed" else scores
        return rewards, errors

    def _function_rewards(self, caller: SafeRewardCaller,
                          batch: pa.RecordBatch) -> tuple[list[float], list[str | None]]:
        items: list[tuple[str, str, str, str, dict]] = []
        for row in batch.select(["data_source", "response_text", "ground_truth"]).to_pylist():
            try:
                name = self.fn_name(row["data_source"])
            except (KeyError, ValueError) as e:
                name = f"unknown:{e}"
            items.append((name, row["data_source"], row["response_text"], row["ground_truth"], {}))
        results = caller.score_batch(items)
        rewards = [r for r, _ in results]
        errors = [e for _, e in results]
        self.errors += sum(e is not None for e in errors)
        return rewards, errors

    def run(self) -> None:
        last_log = time.monotonic()
        while self.running:
            data = self.pull.recv(0.2)
            if data is None:
                continue
            try:
                group = ScoredGroup.from_wire(data)
            except schema.SchemaError as e:
                self.drops.drop("trajectory", str(e))
                continue
            t0 = time.time()
            rewards, errors = self.score(group.batch)
            self.timeline.add("score", t0, time.time())
            self.push.send(group.with_rewards(rewards, errors).to_wire())
            self.scored += group.num_rows
            if time.monotonic() - last_log > 30:
                log.info("scored %d samples, %d reward errors, %d messages dropped",
                         self.scored, self.errors, self.drops.total)
                last_log = time.monotonic()

    def close(self) -> None:
        self.timeline.close()
        if self.caller is not None:
            self.caller.close()
        self.transport.close(linger_s=2.0)


def main(cfg: RunConfig, index: int) -> None:
    """Entry point of ``asyncrl reward CONFIG --index I``; SIGTERM/SIGINT stop it cleanly."""
    if not 0 <= index < cfg.reward.num_workers:
        raise ValueError(f"--index {index} out of range: reward.num_workers={cfg.reward.num_workers}")
    worker = RewardWorker(cfg, index)

    def _stop(*_: object) -> None:
        worker.running = False

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        worker.run()
    finally:
        log.info("stopping: scored %d samples, %d reward errors, %d messages dropped",
                 worker.scored, worker.errors, worker.drops.total)
        worker.close()
