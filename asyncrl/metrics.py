"""Run metrics: one JSON line per record, optional trackers (wandb, mlflow, TensorBoard), and a
live console line.

``metrics.jsonl`` in the run directory is the source of truth (tests and plots read
it); the trackers (:mod:`asyncrl.trackers`) and the console are views of the same records.
Record keys are free-form; the console line picks three of them by the names in
:data:`PROGRESS_KEYS`.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asyncrl.trackers import Tracker, TrackerSet, build_trackers

if TYPE_CHECKING:
    from asyncrl.config import LoggingSection

log = logging.getLogger(__name__)

# Console label -> record keys tried in order (first present wins).
PROGRESS_KEYS: dict[str, tuple[str, ...]] = {
    "reward_mean": ("reward/mean", "reward_mean"),
    "staleness": ("staleness/mean", "staleness_mean", "staleness"),
    "samples/s": ("perf/samples_per_s", "samples_per_s"),
}


def _jsonable(value: Any) -> Any:
    """Plain JSON values; NaN/inf become null (JSON has neither)."""
    if hasattr(value, "item") and callable(value.item):  # 0-d tensors, numpy scalars
        try:
            value = value.item()
        except (ValueError, RuntimeError):  # multi-element array: fall through to tolist
            value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)  # Path and other odd types: readable rather than a crash


def _pick(record: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in record:
            return record[k]
    return None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}"
    return "-" if value is None else str(value)


class MetricsLogger:
    """Writes each record to ``<run_dir>/metrics.jsonl``, to ``trackers`` and to the console.

    The file is opened in append mode so a resumed run keeps earlier lines; each line
    is flushed at once so a crashed run still leaves every step it finished.
    """

    def __init__(
        self,
        run_dir: Path,
        max_steps: int,
        *,
        console: bool = True,
        trackers: Tracker | None = None,
        progress_keys: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self.max_steps = max_steps
        self.progress_keys = progress_keys or PROGRESS_KEYS
        self._file = self.path.open("a", encoding="utf-8")
        self.trackers: Tracker = trackers if trackers is not None else TrackerSet()
        self._last_step = 0  # records without a step go to the trackers at the last one
        self._progress = None
        self._task = None
        # A progress bar on a pipe or file is a stream of control codes: plain lines there.
        if console and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("step"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"))
            self._task = self._progress.add_task("train", total=max_steps, info="")
            self._progress.start()

    @classmethod
    def from_config(cls, lg: LoggingSection, run_dir: Path, max_steps: int, config: Mapping[str, Any], *,
                    resume_step: int | None = None,
                    progress_keys: dict[str, tuple[str, ...]] | None = None) -> MetricsLogger:
        """The logger ``[logging]`` describes: console on or off, the trackers it enables (given the
        resolved ``config``; ``resume_step``: the checkpoint step a resumed run continues after)."""
        trackers = build_trackers(lg, run_dir, config, resume_step=resume_step)
        return cls(run_dir, max_steps, console=lg.console, trackers=trackers, progress_keys=progress_keys)

    def summary(self, record: dict[str, Any]) -> str:
        """The one-line console text: ``reward_mean=… staleness=… samples/s=…``."""
        return " ".join(f"{label}={_fmt(_pick(record, keys))}" for label, keys in self.progress_keys.items())

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (a flat or nested dict; ``step`` drives the progress bar)."""
        self._file.write(json.dumps(_jsonable(record), allow_nan=False) + "\n")
        self._file.flush()
        step = record.get("step")
        if isinstance(step, int):
            self._last_step = step
        self.trackers.log(record, self._last_step)
        if step is None:
            return  # e.g. a one-off event record: file/trackers only
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=step, info=self.summary(record))
        else:
            log.info("step %s/%s %s", step, self.max_steps, self.summary(record))

    def close(self) -> None:
        """Stop the progress bar, close the trackers and the file (idempotent)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        trackers, self.trackers = self.trackers, TrackerSet()
        try:
            trackers.close()
        finally:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
