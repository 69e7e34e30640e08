"""Helpers for end-to-end tests: ``asyncrl up`` as a real process tree (through the launch helper
the benchmarks use, :mod:`benchmarks.launch`), cleaned up exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks.launch import REPO, Up, port_sets, read_metrics

__all__ = ["REPO", "SPEED", "read_metrics", "run_cli", "run_up", "start_up"]

# Every test run: the learner on one thread. On these 2-core machines the generator's engine and
# the learner share the cores; with torch's default of 2 threads each tiny learner step waits on a
# descheduled thread (1.1 s a step, 0.25 s with 1). A placement key users have, no code path skipped.
SPEED = ["placement.learner_threads=1"]


def start_up(config: Path, run_dir: Path, overrides: list[str], max_steps: int | None = None, *,
             resume: bool = False, tty: bool = False) -> Up:
    """``asyncrl up`` started with fresh ports (``up.sets`` holds them); use as a context manager.
    ``tty``: on a pseudo-terminal, as a user runs it (the live view)."""
    return Up(config, run_dir, SPEED + overrides + port_sets(), max_steps, resume=resume, tty=tty)


def run_up(config: Path, run_dir: Path, overrides: list[str], max_steps: int,
           timeout_s: float = 600, tty: bool = False) -> subprocess.CompletedProcess:
    """``asyncrl up`` to completion in its own session (output in ``.stdout``); the whole process
    tree is killed on timeout and at the end."""
    with start_up(config, run_dir, overrides, max_steps, tty=tty) as up:
        code = up.wait(timeout_s)
        return subprocess.CompletedProcess(up.proc.args, code, up.output, "")


def run_cli(command: str, config: Path, run_dir: Path, sets: tuple[str, ...] | list[str],
            max_steps: int | None = None, timeout_s: float = 600) -> subprocess.CompletedProcess:
    """``asyncrl COMMAND CONFIG --run-dir DIR [--max-steps N] --set ...`` to completion, output captured."""
    argv = [sys.executable, "-m", "cli.main", command, str(config), "--run-dir", str(run_dir)]
    argv += ["--max-steps", str(max_steps)] if max_steps is not None else []
    for s in sets:
        argv += ["--set", s]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
