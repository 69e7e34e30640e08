"""What ``asyncrl up`` shows on a terminal: one live view of the run, the lines that matter above it.

Every line of every child still goes to ``<run dir>/logs/<name>.log`` (:mod:`asyncrl.launcher`);
the console gets one of two sinks:

- :class:`PlainSink` (no TTY, or ``--verbose``): every line, prefixed with the child's name
  (what tests, CI logs and ``grep`` read);
- :class:`LiveView` (a TTY): a rich panel of step, reward, staleness, throughput, validation, ETA
  and each worker's state (running, restarting, restarts so far), read from ``metrics.jsonl`` and
  the supervisor, with the lines :func:`worth_showing` picks printed above it: asyncrl's own
  warnings and errors from every process, the learner's milestones, and nothing of vLLM's,
  transformers' or tqdm's chatter (the engine's INFO lines and its per-sync "Failed to load
  weights" warnings stay in the log files).
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

# asyncrl.log's format: "2026-12-03 13:26:23,706 INFO [learner] message"
_OURS = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[A-Z]+) \[(?P<who>[^\]]+)\] (?P<msg>.*)$")
_LEARNER_QUIET = ("step ", "forming weight-sync group", "weights v")  # progress the panel shows instead
_SEVERE = ("WARNING", "ERROR", "CRITICAL")
_HARMLESS = ("Triton is installed, but doesn't include CPU backend",)  # a library's, through our log format


def worth_showing(child: str, line: str) -> bool:
    """Whether a child's output line belongs on the console above the live view."""
    if line.startswith(("Traceback", "asyncrl ")):  # a crash, or a CLI error message (exit 2)
        return True
    m = _OURS.match(line)
    if m is None:
        return False  # vLLM, transformers, tqdm bars, torch warnings: in logs/<child>.log
    if m["level"] in _SEVERE:
        return not m["msg"].startswith(_HARMLESS)
    return child == "learner" and m["level"] == "INFO" and not m["msg"].startswith(_LEARNER_QUIET)


class Sink(Protocol):
    def line(self, child: str, text: str) -> None: ...
    def close(self) -> None: ...


class PlainSink:
    """Every line, prefixed ``[child]``, to stdout (today's output without a TTY)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def line(self, child: str, text: str) -> None:
        with self._lock:
            sys.stdout.write(f"[{child}] {text}")
            sys.stdout.flush()

    def close(self) -> None:
        pass


class MetricsTail:
    """The newest step and validation records of a growing ``metrics.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path, self._pos = path, 0
        self.step: dict[str, Any] = {}
        self.val: dict[str, Any] = {}

    def poll(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open("rb") as f:
            f.seek(self._pos)
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # a line still being written: read it next time
                self._pos += len(raw)
                try:
                    rec = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(rec, dict):
                    continue
                if "reward_mean" in rec:
                    self.step = rec
                if any(k.startswith("val") for k in rec):
                    self.val = {k: v for k, v in rec.items() if k.startswith("val")} | {"step": rec.get("step")}


def _fmt(value: Any, spec: str = ".3g") -> str:
    return "-" if not isinstance(value, (int, float)) else format(value, spec)


def _eta(rec: dict[str, Any], max_steps: int) -> str:
    step, secs = rec.get("step"), rec.get("time_s")
    if not isinstance(step, int) or not isinstance(secs, (int, float)) or step <= 0:
        return "-"
    left = (max_steps - step) * secs / step
    return time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86400 else f"{left / 3600:.0f} h"


class LiveView:
    """A rich Live panel redrawn twice a second; lines worth showing are printed above it."""

    def __init__(self, run_dir: Path, max_steps: int, workers: Any) -> None:
        from rich.console import Console
        from rich.live import Live

        self.max_steps, self.workers = max_steps, workers  # workers(): [(name, state, restarts)]
        self.metrics = MetricsTail(run_dir / "metrics.jsonl")
        self.run_dir, self.started = run_dir, time.monotonic()
        self.console = Console()
        self.live = Live(get_renderable=self._render, console=self.console, refresh_per_second=2,
                         redirect_stdout=True, redirect_stderr=True)
        self.live.start()
        self._handlers = _point_log_handlers_at(sys.stderr)  # the launcher's own log lines too

    def line(self, child: str, text: str) -> None:
        text = text.rstrip("\n")
        if worth_showing(child, text):
            self.console.print(f"[{child}] {text}", markup=False, highlight=False, soft_wrap=True)  # whole lines

    def close(self) -> None:
        self.metrics.poll()
        self.live.stop()
        for handler, stream in self._handlers:
            handler.setStream(stream)

    def _render(self) -> Any:
        from rich.table import Table

        self.metrics.poll()
        rec, val = self.metrics.step, self.metrics.val
        step = rec.get("step", 0)
        grid = Table.grid(padding=(0, 2))
        grid.add_row("step", f"{step}/{self.max_steps}", "elapsed",
                     time.strftime("%H:%M:%S", time.gmtime(time.monotonic() - self.started)),
                     "ETA", _eta(rec, self.max_steps))
        grid.add_row("reward", _fmt(rec.get("reward_mean")), "staleness",
                     f"{_fmt(rec.get('staleness_mean'), '.2f')} (max {_fmt(rec.get('staleness_max'), 'd')})",
                     "samples/s", _fmt(rec.get("samples_per_s")))
        grid.add_row("tokens/s", _fmt(rec.get("tokens_per_s")), "sync s", _fmt(rec.get("weight_sync_s"), ".2f"),
                     "validation", _val_text(val))
        grid.add_row("learner MFU", _fmt(rec.get("learner_mfu"), ".1%"), "generator MFU",
                     _fmt(rec.get("gen_mfu"), ".1%"), "pipeline", _fmt(rec.get("pipeline_efficiency"), ".1%"))
        grid.add_row("workers", "  ".join(_worker_text(*w) for w in self.workers()), "", "", "", "")
        from rich.panel import Panel

        return Panel(grid, title=f"asyncrl up · {self.run_dir}", subtitle="logs/<process>.log · --verbose",
                     expand=False)


def _val_text(val: dict[str, Any]) -> str:
    """``data.test``'s accuracy, then each ``[[data.val]]`` set's (``val/<name>/accuracy``)."""
    accs = ([("acc", val["val_accuracy"])] if "val_accuracy" in val else []) + [
        (k.split("/")[1], v) for k, v in val.items() if k.startswith("val/") and k.endswith("/accuracy")]
    if not accs:
        return "-"
    return " ".join(f"{name} {_fmt(v, '.2f')}" for name, v in accs) + f" @ step {val.get('step')}"


def _worker_text(name: str, state: str, restarts: int) -> str:
    mark = {"running": "[green]●[/]", "restarting": "[yellow]↻[/]", "exited": "[dim]○[/]"}.get(state, "?")
    return f"{mark} {name}" + (f" ({restarts} restart{'s' * (restarts != 1)})" if restarts else "")


def _point_log_handlers_at(stream: Any) -> list[tuple[Any, Any]]:
    """Send the root logger's stream handlers to ``stream`` (Live's proxy); returns what to restore."""
    import logging

    out = []
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            out.append((h, h.setStream(stream)))
    return out


def make_sink(run_dir: Path, max_steps: int, workers: Any, verbose: bool, tty: bool | None = None) -> Sink:
    """The live view on a terminal unless ``verbose``; every line, plainly, otherwise."""
    if (sys.stdout.isatty() if tty is None else tty) and not verbose:
        return LiveView(run_dir, max_steps, workers)
    return PlainSink()
