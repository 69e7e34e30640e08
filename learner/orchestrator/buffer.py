"""Scored groups waiting for the learner, and the oldest-first batch rule."""

from __future__ import annotations

from dataclasses import dataclass, field

from asyncrl.transport.items import ScoredGroup


@dataclass
class GroupBuffer:
    groups: list[ScoredGroup] = field(default_factory=list)

    def add(self, group: ScoredGroup) -> None:
        self.groups.append(group)

    def __len__(self) -> int:
        return len(self.groups)

    def select(self, size: int, min_inflight_bound: int | None) -> list[ScoredGroup] | None:
        """Pop the ``size`` oldest groups (by policy version) if that choice is final.

        A choice is final when no group still in flight could be older than the newest
        chosen one: otherwise that in-flight group might later exceed the staleness bound.
        """
        if len(self.groups) < size:
            return None
        order = sorted(range(len(self.groups)), key=lambda i: self.groups[i].policy_version)
        chosen = order[:size]
        newest = self.groups[chosen[-1]].policy_version
        if min_inflight_bound is not None and min_inflight_bound < newest:
            return None
        picked = set(chosen)
        out = [self.groups[i] for i in chosen]
        self.groups = [g for i, g in enumerate(self.groups) if i not in picked]
        return out

