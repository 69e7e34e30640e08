"""Helpers for end-to-end tests: run ``asyncrl up`` as a real process tree and clean it up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]


def port_overrides() -> list[str]:
    return [f"transport.dispatch=127.0.0.1:{free_port()}",
            f"transport.trajectories=127.0.0.1:{free_port()}",
            f'transport.rewards=["127.0.0.1:{free_port()}"]',
            f"transport.weight_sync=127.0.0.1:{free_port()}"]


def run_up(config: Path, run_dir: Path, overrides: list[str], max_steps: int,
           timeout_s: float = 600) -> subprocess.CompletedProcess:
    """Run ``asyncrl up`` to completion in its own session; kill exactly that session on timeout."""
    argv = [sys.executable, "-m", "cli.main", "up", str(config), "--run-dir", str(run_dir),
            "--max-steps", str(max_steps)]
    for ov in overrides + port_overrides():
        argv += ["--set", ov]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # the launcher stops its own children on SIGINT
        try:
            out, _ = proc.communicate(timeout=60)
        finally:
            _kill_session(proc.pid)
        raise AssertionError(f"asyncrl up timed out after {timeout_s}s:\n{out[-5000:]}")
    _kill_session(proc.pid)
    return subprocess.CompletedProcess(argv, proc.returncode, out, "")


def run_cli(command: str, config: Path, run_dir: Path, sets: tuple[str, ...] | list[str],
            max_steps: int | None = None, timeout_s: float = 600) -> subprocess.CompletedProcess:
    """``asyncrl COMMAND CONFIG --run-dir DIR [--max-steps N] --set ...`` to completion, output captured."""
    argv = [sys.executable, "-m", "cli.main", command, str(config), "--run-dir", str(run_dir)]
    argv += ["--max-steps", str(max_steps)] if max_steps is not None else []
    for s in sets:
        argv += ["--set", s]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)


def _kill_session(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
