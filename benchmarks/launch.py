"""Start ``asyncrl up`` from a test or a benchmark, follow it, stop exactly what it started.

The one launch helper and the one port picker of the tests (``tests/``) and the benchmarks
(``asyncrl bench``, ``asyncrl chaos``)::

    from benchmarks.launch import Up, port_sets, read_metrics

    with Up(config, run_dir, sets + port_sets(), max_steps=8) as up:
        for line in up.follow(timeout_s=300):      # or up.wait_for_step(2), or nothing
            ...
        code = up.wait(timeout_s=600)              # SIGINT, then SIGKILL of the tree on timeout
    steps = [r for r in read_metrics(run_dir) if "reward_mean" in r]

``asyncrl up`` runs in its own session; it starts each of its children in a session of their
own (so a generator's vLLM engine processes die with it), so stopping "what it started" means
the launcher and every process below it, found through ``/proc``, and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STARTED = re.compile(r"started (\S+) \(pid (\d+)\)")  # asyncrl.launcher's line for every (re)start

_given: set[int] = set()


PORT_RANGE_ENV = "ASYNCRL_PORT_RANGE"  # "LO-HI" for free_port (tests/conftest.py: one per xdist worker)


def free_port() -> int:
    """A bindable loopback port below Linux's ephemeral range (32768+), never handed out twice
    in this process, from 20000-32000 or the range ``$ASYNCRL_PORT_RANGE`` names.

    Ports from the ephemeral range (what binding port 0 returns) can be taken between this check
    and the real bind by any outgoing connection or by vLLM's own internal sockets (seen as a
    flaky EADDRINUSE). Processes that pick ports at the same time (parallel test workers) give
    each their own range, for the same reason.
    """
    lo, hi = (int(x) for x in os.environ.get(PORT_RANGE_ENV, "20000-32000").split("-"))
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(2000):
        port = rng.randrange(lo, hi)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port in {lo}-{hi}")


def port_sets(num_rewards: int = 1) -> list[str]:
    """``--set`` overrides giving every address a run binds a fresh loopback port."""
    rewards = ",".join(f'"127.0.0.1:{free_port()}"' for _ in range(num_rewards))
    return [f"transport.dispatch=127.0.0.1:{free_port()}", f"transport.trajectories=127.0.0.1:{free_port()}",
            f"transport.rewards=[{rewards}]", f"weight_sync.address=127.0.0.1:{free_port()}"]


def addresses(sets: list[str]) -> dict[str, str]:
    """``{"dispatch": "127.0.0.1:port", "trajectories": ..., "rewards": ...}`` (the first reward
    worker's) from :func:`port_sets` overrides."""
    out = {}
    for s in sets:
        key, value = s.split("=", 1)
        if key in ("transport.dispatch", "transport.trajectories", "transport.rewards"):
            out[key.split(".", 1)[1]] = value.strip("[]").split(",")[0].strip('"')
    return out


def up_argv(config: Path, run_dir: Path, sets: list[str], max_steps: int | None = None,
            resume: bool = False) -> list[str]:
    argv = [sys.executable, "-m", "cli.main", "up", str(config), "--run-dir", str(run_dir)]
    argv += ["--max-steps", str(max_steps)] if max_steps is not None else []
    argv += ["--resume"] if resume else []
    return argv + [a for s in sets for a in ("--set", s)]


def _pty(columns: int, rows: int = 50) -> tuple[int, int]:
    """A pseudo-terminal (master, slave) of the given size."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    return master, slave


class Up:
    """One ``asyncrl up`` in its own session; its output is read by a thread (kept in
    :attr:`lines`, copied to ``log`` if given, passed to ``on_line``), its children's pids are
    taken from the launcher's ``started NAME (pid N)`` lines (:attr:`pids`)."""

    def __init__(self, config: Path, run_dir: Path, sets: list[str], max_steps: int | None = None, *,
                 resume: bool = False, log: Path | None = None,
                 on_line: Callable[[str], None] | None = None, tty: bool = False) -> None:
        self.run_dir, self.sets = run_dir, sets
        self.lines: list[str] = []
        self.pids: dict[str, int] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._log = open(log, "a", buffering=1) if log is not None else None  # noqa: SIM115 (closed by close())
        self._on_line = on_line
        argv, env = up_argv(config, run_dir, sets, max_steps, resume), {**os.environ, "PYTHONUNBUFFERED": "1"}
        if tty:  # on a terminal, as a user's `make quickstart` is (asyncrl.live's view)
            self._master, slave = _pty(columns=160)
            self.proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                                         text=True, start_new_session=True,
                                         env={**env, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "50"})
            os.close(slave)
            self._reader = threading.Thread(target=self._read_tty, daemon=True)
        else:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True, start_new_session=True, env=env)
            self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def _read_tty(self) -> None:
        """The terminal's output, split into lines (escape codes and all)."""
        data = b""
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                chunk = b""
            if not chunk:
                break
            data += chunk
            *done, data = data.split(b"\n")
            for raw in done:
                self._line(raw.decode(errors="replace") + "\n")
        if data:
            self._line(data.decode(errors="replace"))
        os.close(self._master)
        self._queue.put(None)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._line(line)
        self._queue.put(None)

    def _line(self, line: str) -> None:
        self.lines.append(line)
        if m := STARTED.search(line):
            self.pids[m.group(1)] = int(m.group(2))
        if self._log is not None:
            self._log.write(line)
        if self._on_line is not None:
            self._on_line(line)
        self._queue.put(line)

    def follow(self, timeout_s: float = 600) -> Iterator[str]:
        """Yield output lines as they come until the output ends; AssertionError past ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._queue.get(timeout=max(0.01, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise AssertionError(f"asyncrl up: no end of output after {timeout_s:.0f}s:\n"
                                         f"{self.output[-5000:]}") from None
                continue
            if line is None:
                return
            yield line

    def wait_for_step(self, step: int, timeout_s: float = 300) -> list[dict[str, Any]]:
        """Poll ``metrics.jsonl`` until the learner logged ``step``; return the step records."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"asyncrl up ended early:\n{self.output[-5000:]}"
            steps = [r for r in read_metrics(self.run_dir) if "reward_mean" in r]
            if steps and steps[-1]["step"] >= step:
                return steps
            time.sleep(0.5)
        raise AssertionError(f"step {step} not reached in {timeout_s:.0f}s:\n{self.output[-5000:]}")

    def interrupt(self) -> None:
        """Ctrl-C, as a user would: the launcher stops its children and exits 130."""
        _signal_group(self.pid, signal.SIGINT)

    def wait(self, timeout_s: float = 600) -> int:
        """The launcher's exit code; past ``timeout_s``: SIGINT, 60 s more, then AssertionError."""
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.interrupt()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=60)
            self.kill()
            raise AssertionError(f"asyncrl up timed out after {timeout_s:.0f}s:\n{self.output[-5000:]}") from None
        self._reader.join(timeout=30)  # the last lines (the children's exit messages)
        return code

    def kill(self) -> None:
        """SIGKILL what this run started and is still there: while the launcher runs, it and every
        process below it; once it has ended, any child it left behind (each leads its own group)."""
        if self.proc.poll() is None:
            kill_tree(self.pid)
            self.proc.wait()
        for pid in self.pids.values():
            if _our_child(pid):
                _signal_group(pid, signal.SIGKILL)

    def close(self) -> None:
        self.kill()
        self._reader.join(timeout=5)
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Up:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_up(config: Path, run_dir: Path, sets: list[str], max_steps: int | None = None,
           timeout_s: float = 600) -> subprocess.CompletedProcess:
    """``asyncrl up`` to completion (output captured); the whole tree is killed on timeout."""
    with Up(config, run_dir, sets, max_steps) as up:
        code = up.wait(timeout_s)
        return subprocess.CompletedProcess(up.proc.args, code, up.output, "")


def _children() -> dict[int, list[int]]:
    """``{ppid: [pid, ...]}`` for every process in /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = parent_pid(int(entry))
            if ppid is not None:
                tree.setdefault(ppid, []).append(int(entry))
    return tree


def parent_pid(pid: int) -> int | None:
    """``pid``'s parent from /proc, None when it is gone or already dead (a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
    return None if fields[0] in "ZX" else int(fields[1])


def descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        kids = tree.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _our_child(pid: int) -> bool:
    """Still a process of a run (``python -m cli.main ROLE``, leading its own group), not a reused pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return os.getpgid(pid) == pid and b"cli.main" in cmdline
    except (OSError, ProcessLookupError):
        return False


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``'s process group first (no more restarts), then every process that was below it."""
    below = descendants(pid)
    _signal_group(pid, signal.SIGKILL)
    for p in below:
        _signal_group(p, signal.SIGKILL)  # a child of the launcher leads its own group (vLLM engines in it)
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a jsonl file still being written (a torn last line is skipped); [] if absent."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(run_dir / "metrics.jsonl")
