"""Scored groups waiting for the learner, and the oldest-first batch rule."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa


@dataclass
class GroupBuffer:
    groups: list[pa.RecordBatch] = field(default_factory=list)

    def add(self, batch: pa.RecordBatch) -> None:
        self.groups.append(batch)

    def __len__(self) -> int:
        return len(self.groups)

    def select(self, size: int, min_inflight_bound: int | None) -> list[pa.RecordBatch] | None:
        """Pop the ``size`` oldest groups (by policy version) if that choice is final.

        A choice is final when no group still in flight could be older than the newest
        chosen one: otherwise that in-flight group might later exceed the staleness bound.
        """
        if len(self.groups) < size:
            return None
        order = sorted(range(len(self.groups)), key=lambda i: _version(self.groups[i]))
        chosen = order[:size]
        newest = _version(self.groups[chosen[-1]])
        if min_inflight_bound is not None and min_inflight_bound < newest:
            return None
        picked = set(chosen)
        out = [self.groups[i] for i in chosen]
        self.groups = [g for i, g in enumerate(self.groups) if i not in picked]
        return out


def _version(batch: pa.RecordBatch) -> int:
    return int(batch.column("policy_version")[0].as_py())
