"""A generator's own metrics: how busy it was, what it produced, how long syncs paused it.

Written as JSON lines to ``<run dir>/rollout-<index>.jsonl`` every ``interval_s`` and at
exit. ``busy_s`` counts wall time with at least one request in flight (the engine had work),
``paused_s`` the time spent inside weight syncs. Benchmarks divide by ``time_s`` for the busy
fraction. The same busy periods and sync pauses go to the run's timeline as ``generate`` and
``sync`` spans (:mod:`asyncrl.timeline`) when one is given.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from asyncrl.timeline import BusySpans, Timeline


class GeneratorStats:
    def __init__(self, path: Path, interval_s: float = 5.0, timeline: Timeline | None = None) -> None:
        self.path, self.interval_s = path, interval_s
        self.timeline = timeline or Timeline(None, "")
        self.busy = BusySpans(self.timeline, "generate")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = self.last_write = time.monotonic()
        self.active = 0
        self.busy_since = 0.0
        self.busy_s = self.paused_s = 0.0
        self.groups = self.samples = self.tokens = self.syncs = 0

    def begin(self) -> None:
        self.busy.begin()
        if self.active == 0:
            self.busy_since = time.monotonic()
        self.active += 1

    def end(self, samples: int, tokens: int) -> None:
        self.busy.end()
        self.active -= 1
        if self.active == 0:
            self.busy_s += time.monotonic() - self.busy_since
        self.groups += 1
        self.samples += samples
        self.tokens += tokens

    def paused(self, seconds: float) -> None:
        self.syncs += 1
        self.paused_s += seconds
        now = time.time()
        self.timeline.add("sync", now - seconds, now)

    def snapshot(self, version: int) -> dict[str, float | int]:
        now = time.monotonic()
        busy = self.busy_s + (now - self.busy_since if self.active else 0.0)
        return {"time_s": now - self.t0, "policy_version": version, "busy_s": busy, "paused_s": self.paused_s,
                "groups": self.groups, "samples": self.samples, "tokens": self.tokens, "syncs": self.syncs,
                "active_groups": self.active}

    def maybe_write(self, version: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < self.interval_s:
            return
        self.last_write = now
        with self.path.open("a") as f:
            f.write(json.dumps(self.snapshot(version)) + "\n")

    def close(self, version: int) -> None:
        """The final stats line; closes the busy span still open and flushes the timeline."""
        self.maybe_write(version, force=True)
        self.busy.close()
        self.timeline.close()
