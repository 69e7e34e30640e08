"""The orchestrator: rank 0's side of the pipeline, behind one small API.

It owns the run's dispatch state (:mod:`~learner.orchestrator.state`: dispatcher, buffer,
membership, counters, one lock), the I/O pump (:mod:`~learner.orchestrator.io`) and the weight
syncer (:mod:`~learner.orchestrator.syncer`). The learner's rank 0 calls, in order::

    orch = Orchestrator(cfg, train_prompts, val_prompts, make_transport(cfg.transport), sync_source(model, ranks))
    orch.restore(checkpoint_state)          # resuming: version, data position, counters
    orch.connect()                          # every generator said hello and serves the weights
    groups = orch.next_batch()              # oldest first; stale ones dropped; DAPO refills
    ... train on [g.batch for g in groups] at orch.version ...
    orch.trained(groups)                    # settled; the policy version moves on
    seconds = orch.publish_weights()        # every live generator serves orch.version
    rec = orch.record(step, groups, stats, times)   # the metrics.jsonl record
    orch.state()                            # what a checkpoint saves
    orch.stop()                             # generators told to stop; endpoints closed

Every wait lets a restarted or new generator in: when membership changes during a wait, the
generators get the current weights at once (re-forming the group) instead of at the next sync,
so a newcomer never idles and a dead member never blocks the next sync.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from asyncrl import messages
from asyncrl.config import RunConfig
from asyncrl.transport import Transport
from asyncrl.transport.items import ScoredGroup
from learner.algo.advantages import needs_baseline
from learner.fsdp.stream_sync import SyncSource
from learner.orchestrator.batches import split_by_signal, split_stale
from learner.orchestrator.counters import Counters
from learner.orchestrator.dispatcher import Dispatcher, Sampling, TokenizedPrompt
from learner.orchestrator.io import IOPump
from learner.orchestrator.record import IOTotals, StepTimes, step_record, worker_restarts
from learner.orchestrator.state import OrchestratorState
from learner.orchestrator.syncer import WeightSyncer
from learner.orchestrator.validation import ValidationResult, ValSet, validation_metrics

log = logging.getLogger("learner.orchestrator")

T = TypeVar("T")
_CHANGED = object()  # a wait predicate's answer: the generators' membership changed


class Orchestrator:
    def __init__(self, cfg: RunConfig, train: list[TokenizedPrompt], val: list[TokenizedPrompt],
                 transport: Transport, weights: SyncSource, syncer: type[WeightSyncer] = WeightSyncer,
                 val_sets: list[ValSet] | None = None) -> None:
        self.cfg, self.val_prompts = cfg, val
        # data.test (unnamed: the val_* keys) first, then the [[data.val]] sets
        self.val_sets = ([ValSet(None, val)] if val else []) + list(val_sets or [])
        s, lr = cfg.sampling, cfg.learner
        baseline = needs_baseline(cfg.algorithm.advantage)
        sampling = Sampling(s.n, s.temperature, s.max_new_tokens, greedy_baseline=baseline)
        dispatcher = Dispatcher(train, prompts_per_step=lr.prompts_per_step, max_staleness=lr.max_staleness,
                                sampling=sampling, seed=cfg.run.seed, shuffle=cfg.data.shuffle)
        self._state = OrchestratorState.for_run(cfg, dispatcher)
        self.counters = self._state.counters
        self.pump = IOPump(cfg, self._state, transport)
        self.syncer = syncer(cfg, self._state, self.pump.send_to, weights)
        self.version = 0  # the policy version generators should serve (trained steps so far)

    # ---- lifecycle --------------------------------------------------------------------
    def connect(self) -> float:
        """Start the I/O pump, wait for every generator's hello, then send them the current weights
        (the resumed ones, or the initial ones, which forms the first weight-sync group): a
        generator gets no prompt before it serves the learner's weights. Returns the sync's seconds."""
        cfg, n = self.cfg, self.cfg.rollout.num_generators
        self.syncer.host_store()
        self.pump.start()
        log.info("waiting for %d generator(s); weight-sync store at %s", n, cfg.weight_sync.address)
        ms = self._state.membership
        self._state.wait_for(lambda: True if len(ms.members) >= n else None, cfg.weight_sync.timeout_s,
                             f"hello from all {n} generator(s)")
        secs = self.publish_weights()
        log.info("all %d generator(s) connected and serving weights v%d (%.2fs)", n, self.version, secs)
        return secs

    def stop(self) -> None:
        """Tell every generator to stop, give the messages time to leave, close the endpoints."""
        self.pump.send_all(messages.encode("stop"))
        time.sleep(0.5)
        self.close()

    def close(self) -> None:
        """Close the endpoints (idempotent; also on the error path)."""
        if self.pump.ident is None:  # never started: its endpoints are still ours to close
            self.pump.transport.close(linger_s=0.0)
        else:
            self.pump.stop()

    # ---- one step ---------------------------------------------------------------------
    def next_batch(self) -> list[ScoredGroup]:
        """The oldest ``prompts_per_step`` usable groups: too-stale ones dropped (policy ``drop``)
        and, with DAPO dynamic sampling, groups whose rewards are all equal filtered out while
        their slots are dispatched again until the batch is full."""
        B, a = self.cfg.learner.prompts_per_step, self.cfg.algorithm
        batch: list[ScoredGroup] = []
        filtered_here = 0
        st = self._state
        while len(batch) < B:
            k = B - len(batch)
            groups = self._wait(partial(self._select, k), self.cfg.learner.wait_timeout_s,
                                f"{k} scored groups from the reward workers")
            if a.stale_policy == "drop":
                groups, stale = split_stale(groups, self.version, self.cfg.learner.max_staleness)
                with st.cond:
                    self.counters.stale_dropped += len(stale)
                    st.dispatcher.discard(len(stale))  # like DAPO's: a replacement must be admissible
                    st.dispatcher.settle([g.group_id for g in stale])
            if a.dynamic_sampling and groups:
                groups, flat = split_by_signal(groups)
                filtered_here += len(flat)
                with st.cond:
                    self.counters.groups_filtered += len(flat)
                    st.dispatcher.discard(len(flat))  # their admission slots are handed out again
                    st.dispatcher.settle([g.group_id for g in flat])
                if filtered_here > a.dynamic_sampling_max_groups * B:
                    raise RuntimeError(
                        f"dynamic sampling dropped {filtered_here} groups with equal rewards while filling one "
                        f"batch (limit algorithm.dynamic_sampling_max_groups={a.dynamic_sampling_max_groups} x "
                        f"{B}): the reward gives no signal for this policy/data")
            batch += groups
        return batch

    def _select(self, k: int) -> list[ScoredGroup] | None:
        """Under the lock: the ``k`` oldest scored groups, once no older group can still arrive."""
        return self._state.buffer.select(k, self._state.dispatcher.min_inflight_bound())

    def settle(self, groups: list[ScoredGroup]) -> None:
        """These groups were trained on (or deliberately dropped): never dispatch them again."""
        with self._state.cond:
            self._state.dispatcher.settle([g.group_id for g in groups])

    def trained(self, groups: list[ScoredGroup]) -> int:
        """A step trained on ``groups``: settle them and move to the next policy version (returned)."""
        self.settle(groups)
        self.version += 1
        return self.version

    def publish_weights(self) -> float:
        """Broadcast the weights of :attr:`version` to every live generator; seconds until all serve them."""
        return self.syncer.sync(self.version)

    def validate(self, dump: Callable[[list[ValidationResult]], object] | None = None) -> dict[str, float]:
        """Score every validation set with the generators at their current version: the metrics
        (``dump`` also gets the scored groups, e.g. :meth:`learner.samples.SampleDumps.validation`)."""
        results = self.run_validation()
        if dump is not None and results:
            dump(results)
        return validation_metrics(results, self.cfg.reward.function, multi_turn=self.cfg.environment.name is not None)

    def run_validation(self) -> list[ValidationResult]:
        """Queue every set's prompts at once (validation bypasses admission), wait for all of them
        scored: each set's groups, in prompt order (what a sample dump writes)."""
        if not self.val_sets:
            return []
        st, max_new = self._state, self.cfg.sampling.max_new_tokens
        with st.cond:
            gids = [st.dispatcher.add_validation(v.prompts, v.max_tokens or max_new, v.n, v.temperature,
                                                 scope=f"val/{v.name}")
                    for v in self.val_sets]
        every = [g for ids in gids for g in ids]
        res = self._wait(lambda: [st.val_results.pop(g) for g in every] if all(g in st.val_results for g in every)
                         else None, self.cfg.learner.wait_timeout_s, f"{len(every)} validation results")
        out, i = [], 0
        for v, ids in zip(self.val_sets, gids):
            out.append(ValidationResult(v, res[i:i + len(ids)]))
            i += len(ids)
        return out

    def record(self, step: int, groups: list[ScoredGroup], stats: dict[str, Any], times: StepTimes) -> dict[str, Any]:
        """The ``metrics.jsonl`` record of ``step`` (see :func:`learner.orchestrator.record.step_record`)."""
        p = self.pump
        with self._state.cond:
            counters = Counters(**self.counters.as_dict())
        io = IOTotals(messages_dropped=p.drops.total, transport_s=p.transport_s, bytes_in=p.bytes_in)
        return step_record(step, self.version, groups, times, counters, io, worker_restarts(self.cfg.run.dir), stats,
                           episodes=self.cfg.environment.name is not None)

    # ---- checkpoints ------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """JSON-able: the policy version, the data position with every outstanding prompt, the counters."""
        with self._state.cond:
            return {"version": self.version, "dispatcher": self._state.dispatcher.state(),
                    **self.counters.checkpoint()}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` (a checkpoint's ``state.json``; older ones lack some counters)."""
        with self._state.cond:
            self.version = int(state["version"])
            self._state.dispatcher.restore(state["dispatcher"], self.version)
            self.counters.load(state)

    # ---- waiting ----------------------------------------------------------------------
    def _wait(self, predicate: Callable[[], T | None], timeout: float, what: str) -> T:
        """:meth:`OrchestratorState.wait_for` that sends the current weights whenever membership changes."""
        st, syncer, deadline = self._state, self.syncer, time.monotonic() + timeout
        while True:
            got = st.wait_for(lambda: _CHANGED if st.membership.members != syncer.members else predicate(),
                              max(0.0, deadline - time.monotonic()), what)
            if got is not _CHANGED:
                return got  # type: ignore[return-value]
            log.info("generators changed while waiting for %s: sending weights v%d", what, self.version)
            self.publish_weights()
