"""What each process was doing, when: spans appended to ``<run dir>/timeline/<name>.jsonl``.

One JSON object per line, ``{"kind": "train", "t0": 1764770000.12, "t1": 1764770001.5}``, in wall-clock
seconds (``time.time()``) so the files of processes started separately line up. The learner writes
``wait`` / ``train`` / ``sync`` / ``validate`` spans, each generator ``generate`` (at least one request
in flight) and ``sync`` (paused for a weight update), each reward worker ``score`` (one group scored).
``asyncrl report`` draws them as lanes, measures how much of the learner's training time some generator
was busy (the overlap asynchrony buys) and where a step's time went (cli/report/breakdown.py).

Spans are buffered and appended every ``flush_s`` seconds (a killed process loses at most those);
a folder that cannot be written is logged once and the run goes on without a timeline::

    tl = Timeline(run_dir, "learner")
    with tl.span("train"):
        ...
    tl.close()
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

FOLDER = "timeline"


class Timeline:
    """A buffered span writer for one process; ``Timeline(None, name)`` records nothing."""

    def __init__(self, run_dir: Path | None, name: str, flush_s: float = 2.0) -> None:
        self.path = Path(run_dir) / FOLDER / f"{name}.jsonl" if run_dir is not None else None
        self.flush_s = flush_s
        self.buffer: list[str] = []
        self.last_flush = time.monotonic()

    def add(self, kind: str, t0: float, t1: float) -> None:
        """Record one span (wall-clock seconds); written at the next flush."""
        if self.path is None:
            return
        self.buffer.append(json.dumps({"kind": kind, "t0": round(t0, 4), "t1": round(t1, 4)}))
        if time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    @contextmanager
    def span(self, kind: str) -> Iterator[None]:
        """Record the time the ``with`` body took (also when it raises)."""
        t0 = time.time()
        try:
            yield
        finally:
            self.add(kind, t0, time.time())

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if self.path is None or not self.buffer:
            return
        lines, self.buffer = self.buffer, []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write("\n".join(lines) + "\n")
        except OSError as e:  # the timeline is a diagnostic: never fail the run over it
            log.warning("timeline disabled: cannot write %s (%s)", self.path, e)
            self.path = None

    def close(self) -> None:
        self.flush()


class BusySpans:
    """Turns begin/end of overlapping jobs into ``kind`` spans covering the time at least one was open."""

    def __init__(self, timeline: Timeline, kind: str) -> None:
        self.timeline, self.kind = timeline, kind
        self.active = 0
        self.since = 0.0

    def begin(self) -> None:
        if self.active == 0:
            self.since = time.time()
        self.active += 1

    def end(self) -> None:
        self.active -= 1
        if self.active == 0:
            self.timeline.add(self.kind, self.since, time.time())

    def close(self) -> None:
        """Close a span still open (the process is stopping with jobs in flight)."""
        if self.active > 0:
            self.timeline.add(self.kind, self.since, time.time())
            self.active = 0
