"""The orchestrator's state and its one lock.

Everything the I/O pump, the weight syncer and the training loop share lives here, guarded by
``cond`` (a :class:`threading.Condition`): the :class:`Dispatcher` (what is in flight, admission),
the :class:`GroupBuffer` (scored groups waiting to be trained), the :class:`Membership` of the
generators, validation results and the :class:`Counters`. Only the orchestrator package takes
the lock; the learner calls :class:`~learner.orchestrator.orchestrator.Orchestrator` methods.

The rules that touch two of them at once are methods here: a generator's hello or silence
moves its in-flight prompts back to the dispatcher's queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from asyncrl.config import RunConfig
from asyncrl.transport.items import ScoredGroup
from learner.orchestrator.buffer import GroupBuffer
from learner.orchestrator.counters import Counters
from learner.orchestrator.dispatcher import Dispatcher
from learner.orchestrator.membership import Members, Membership, name

log = logging.getLogger("learner.orchestrator")

T = TypeVar("T")


class OrchestratorState:
    def __init__(self, dispatcher: Dispatcher, membership: Membership, counters: Counters) -> None:
        self.dispatcher, self.membership, self.counters = dispatcher, membership, counters
        self.buffer = GroupBuffer()
        self.val_results: dict[int, ScoredGroup] = {}
        self.cond = threading.Condition()
        self.error: BaseException | None = None  # set when the I/O pump died

    @classmethod
    def for_run(cls, cfg: RunConfig, dispatcher: Dispatcher) -> OrchestratorState:
        """The state of ``cfg``'s generators around ``dispatcher``, sharing its counters."""
        counters = dispatcher.counters
        return cls(dispatcher, Membership(cfg.rollout.num_generators, cfg.liveness.generator_timeout_s, counters),
                   counters)

    def wait_for(self, predicate: Callable[[], T | None], timeout: float, what: str) -> T:
        """Block until ``predicate()`` (run under the lock) returns non-None; raise TimeoutError
        naming ``what`` after ``timeout`` seconds, RuntimeError if the I/O pump failed."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if self.error is not None:
                    raise RuntimeError(f"learner I/O thread failed: {self.error!r}")
                got = predicate()
                if got is not None:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
                self.cond.wait(min(left, 1.0))

    def members(self) -> Members:
        with self.cond:
            return self.membership.snapshot()

    def fail(self, error: BaseException) -> None:
        with self.cond:
            self.error = error
            self.cond.notify_all()

    # ---- rules over membership and dispatch; the caller holds the lock --------------------
    def hello(self, gen: bytes) -> None:
        """``gen`` (re)joined: held until it serves the current weights; what it had in flight is
        dispatched again."""
        self.membership.hello(gen, known_before=gen in self.dispatcher.versions)
        self.lose(self.dispatcher.hold_generator(gen), f"{name(gen)} restarted")

    def declare_silent_gone(self, now: float) -> None:
        for gen in self.membership.silent(now):
            self.membership.declare_gone(gen)
            self.lose(self.dispatcher.hold_generator(gen), f"{name(gen)} is gone")

    def synced(self, gen: bytes, version: int) -> None:
        self.membership.mark_synced(gen, version)
        self.dispatcher.release_generator(gen)

    def lose(self, gids: list[int], why: str) -> None:
        """Re-queue these in-flight groups' prompts."""
        if gids:
            n = self.dispatcher.lose(gids)
            log.warning("re-dispatching %d prompt(s): %s", n, why)

    def arrived(self, group: ScoredGroup) -> bool:
        """A scored group came back; False when it was not in flight (a late duplicate or foreign)."""
        if group.split == "val":
            self.val_results[group.group_id] = group
            self.dispatcher.val_arrived(group.group_id)
            return True
        if self.dispatcher.arrived(group.group_id) is None:
            self.counters.duplicates_dropped += 1
            self.counters.samples_duplicate_dropped += group.num_rows
            log.warning("dropped group %d: not in flight (a late duplicate of a re-dispatched prompt, or foreign)",
                        group.group_id)
            return False
        self.buffer.add(group)
        return True
