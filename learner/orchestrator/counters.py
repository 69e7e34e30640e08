"""The orchestrator's reliability counters: one typed record, saved in every checkpoint.

Each counter has one owner that increments it (named below); they continue across a resume
(what happened after the checkpoint is discarded with the steps it belonged to). The names are
the ``metrics.jsonl`` keys, and the checkpoint layout predates this record: ``stale_dropped`` and
``groups_filtered`` sit at the top of ``state.json``, the others under ``"counters"``, so
checkpoints written before and after this file read the same.

    counters = Counters(); counters.generator_restarts += 1
    state = counters.checkpoint(); Counters.from_checkpoint(state)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

_TOP_LEVEL = ("stale_dropped", "groups_filtered")  # where checkpoints have always kept these two


@dataclass
class Counters:
    prompts_redispatched: int = 0  # Dispatcher.lose: prompts dispatched again (worker died, timed out)
    samples_lost: int = 0  # Dispatcher.lose: samples of those prompts (regenerated)
    duplicates_dropped: int = 0  # IOPump: groups that arrived but were not in flight
    samples_duplicate_dropped: int = 0  # IOPump: their samples
    generator_restarts: int = 0  # Membership.hello: a hello from an identity seen before
    generators_gone: int = 0  # Membership.declare_gone: silent for liveness.generator_timeout_s
    sync_failures: int = 0  # WeightSyncer: weight syncs that had to be retried
    stale_dropped: int = 0  # batches.select_batch: groups past max_staleness (stale_policy = "drop")
    groups_filtered: int = 0  # batches.select_batch: groups without signal (dynamic sampling)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def checkpoint(self) -> dict[str, Any]:
        """The ``state.json`` entries: two top-level keys and a ``counters`` map."""
        d = self.as_dict()
        return {**{k: d.pop(k) for k in _TOP_LEVEL}, "counters": d}

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> Counters:
        """Read :meth:`checkpoint`'s layout; a counter a checkpoint lacks (older runs) starts at 0."""
        saved = dict(state.get("counters", {}))
        for k in _TOP_LEVEL:
            if k in state:
                saved[k] = state[k]
        return cls(**{f.name: int(saved.get(f.name, 0)) for f in fields(cls)})

    def load(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's counters, in place (the dispatcher, membership and pump
        hold this very record)."""
        saved = Counters.from_checkpoint(state)
        for f in fields(self):
            setattr(self, f.name, getattr(saved, f.name))
