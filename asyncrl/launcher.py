"""``asyncrl up``: start every process of a run, forward their logs, supervise them.

Each child is ``python -m cli.main <role> CONFIG --set ...`` in its own process group
(so vLLM's engine processes die with their generator). Lines are prefixed with the
child's name and also written to ``<run dir>/logs/<name>.log``. The run ends with exit
0 when the learner exits 0. A generator or reward worker that dies (any signal, kill -9
included) has its whole process group reaped (vLLM's engine process with it) and is
restarted after a doubling back-off, up to ``run.max_restarts`` times each; the learner
re-dispatches the prompts lost with it, and a restarted generator says hello, joins a
re-formed weight-sync group and receives the current weights before any prompt. When the
learner dies the run stops with a message naming ``--resume``, or, with
``run.restart_learner``, every process is restarted from the newest checkpoint. Every
restart is a line in ``<run dir>/supervisor.jsonl``. Ctrl-C stops everything (exit 130).
Before starting them it writes each one's resolved config to ``<run dir>/resolved/<name>.json``
(:mod:`asyncrl.resolved`), for inspection: the children still read the TOML.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from asyncrl.config import RunConfig
from asyncrl.live import Sink, make_sink
from asyncrl.resolved import write_resolved

log = logging.getLogger("asyncrl.up")


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    tail: list[str] = field(default_factory=list)
    restarts: int = 0
    restart_at: float | None = None  # monotonic time of a scheduled restart
    env: dict[str, str] | None = None  # its placement (asyncrl.placement), None: none applied
    reader: threading.Thread | None = None  # forwards its output (see _forward)


def plan_children(cfg: RunConfig, config_path: Path, overrides: list[str]) -> list[Child]:
    """The processes of :func:`asyncrl.procplan.processes` (the learner starts torchrun itself)."""
    from asyncrl.procplan import processes

    return [Child(p.name, p.argv, env=p.env) for p in processes(cfg, config_path, overrides)]


def run_torchrun(cfg: RunConfig, config_path: Path, overrides: list[str], node_rank: int) -> int:
    """``asyncrl learner`` with several ranks: run torchrun for this node's ranks; return its exit code.

    A node other than 0 first waits (``learner.rendezvous_timeout_s``) for node 0's rendezvous
    endpoint to answer, so an unreachable node 0 is named instead of torchrun's traceback.
    """
    from asyncrl.config import parse_address
    from asyncrl.placement import APPLIED, child_env, make_plan
    from asyncrl.procplan import torchrun_argv

    lr = cfg.learner
    argv = torchrun_argv(cfg, config_path, overrides, node_rank)
    if node_rank > 0:
        _await_endpoint(*parse_address(str(lr.rdzv_endpoint)), lr.rendezvous_timeout_s)
    env = dict(os.environ)  # under `asyncrl up` (or a deploy script) the placement is already applied
    if env.get(APPLIED) != "1":
        env = child_env(make_plan(cfg, only="learner").env.get("learner", {}), env)
    log.info("learner node %d of %d: starting %d rank(s) under torchrun", node_rank, lr.nnodes,
             lr.world_size // lr.nnodes)
    code = subprocess.run(argv, env=env).returncode
    if code and lr.nnodes > 1:
        log.error("learner node %d: torchrun exited with code %d (rendezvous %s, %d node(s) expected within "
                  "learner.rendezvous_timeout_s=%.0fs: was every node started with its --node-rank?)", node_rank,
                  code, lr.rdzv_endpoint, lr.nnodes, lr.rendezvous_timeout_s)
    return code


def _await_endpoint(host: str, port: int, timeout_s: float) -> None:
    import socket

    from asyncrl.errors import PeerMissing

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=2).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise PeerMissing(f"learner node 0's rendezvous endpoint {host}:{port} did not answer within "
                                  f"{timeout_s:.0f}s (learner.rendezvous_timeout_s): {e}") from None
            time.sleep(0.5)


def _forward(child: Child, log_dir: Path, sink: Sink) -> None:
    assert child.proc is not None and child.proc.stdout is not None
    with open(log_dir / f"{child.name}.log", "a", buffering=1) as f:
        for line in child.proc.stdout:
            f.write(line)
            child.tail = (child.tail + [line.rstrip()])[-20:]
            sink.line(child.name, line)


def _states(children: list[Child]) -> list[tuple[str, str, int]]:
    """Each child's name, state (running / restarting / exited) and restarts, for the live view."""
    def state(c: Child) -> str:
        if c.restart_at is not None:
            return "restarting"
        return "running" if c.proc is not None and c.proc.poll() is None else "exited"
    return [(c.name, state(c), c.restarts) for c in children]


def _signal_group(child: Child, sig: int) -> None:
    if child.proc is not None and child.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, sig)


def _reap_group(child: Child) -> None:
    """Kill what is left of a dead child's process group (its pid is its group id)."""
    if child.proc is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.proc.pid, signal.SIGKILL)


def stop_all(children: list[Child], grace_s: float = 20.0) -> None:
    """SIGTERM each child's main process (not its group: a generator shuts its own vLLM engine
    processes down in order, and a signal reaching them mid-shutdown leaves vLLM's shared-memory
    queues behind), then SIGKILL whatever is left of each group after ``grace_s``."""
    for c in children:
        if c.proc is not None and c.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                c.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for c in children:
        if c.proc is None:
            continue
        try:
            c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", c.name, grace_s)
        _signal_group(c, signal.SIGKILL)  # also reaps grandchildren (vLLM engine cores)
        c.proc.wait()


def run_up(cfg: RunConfig, config_path: Path, overrides: list[str], verbose: bool = False) -> int:
    """Start and supervise all processes; return the exit code for ``asyncrl up``. On a terminal
    the console is a live view (:mod:`asyncrl.live`) unless ``verbose``; logs/ has every line."""
    log_dir = cfg.run.dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    interrupted = threading.Event()
    prev = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    prev_term = signal.signal(signal.SIGTERM, lambda *_: interrupted.set())
    learner_restarts = 0
    from asyncrl.peak import prime

    prime(cfg)  # CPU hosts: matmul peaks for the MFU figures, measured while the machine is still idle
    current: list[Child] = []
    sink = make_sink(cfg.run.dir, cfg.run.max_steps, lambda: _states(current), verbose)
    try:
        while True:
            children = current[:] = plan_children(cfg, config_path, overrides)
            log.info("resolved configs: %s", write_resolved(cfg, cfg.run.dir, [c.name for c in children]))
            try:
                for c in children:
                    _spawn(c, log_dir, sink)
                code = _supervise(children, interrupted, cfg, log_dir, sink)
            finally:
                stop_all(children)
            if code != LEARNER_DIED:
                return code
            if not cfg.run.restart_learner or learner_restarts >= cfg.run.max_restarts or not _has_checkpoint(cfg):
                log.error("the learner died; resume from the newest checkpoint with: asyncrl up %s --resume%s",
                          config_path, "" if _has_checkpoint(cfg) else " (none written yet: set "
                          "learner.checkpoint_every)")
                return 1
            learner_restarts += 1
            _event(cfg, "restart", "all", learner_restarts, "learner died: restarting every process with --resume")
            overrides = [o for o in overrides if not o.startswith("run.resume=")] + ["run.resume=true"]
            cfg.run.resume = True  # what the restarted processes read (and their resolved configs show)
            time.sleep(cfg.run.restart_backoff_s * 2 ** (learner_restarts - 1))
    finally:
        sink.close()
        signal.signal(signal.SIGINT, prev)
        signal.signal(signal.SIGTERM, prev_term)


LEARNER_DIED = -1


def _spawn(c: Child, log_dir: Path, sink: Sink) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if c.env is not None:
        from asyncrl.placement import child_env

        env = child_env(c.env, env)
    c.proc = subprocess.Popen(c.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env, start_new_session=True, cwd=os.getcwd())
    c.reader = threading.Thread(target=_forward, args=(c, log_dir, sink), daemon=True)
    c.reader.start()
    log.info("started %s (pid %d)", c.name, c.proc.pid)


def _has_checkpoint(cfg: RunConfig) -> bool:
    root = cfg.run.dir / "checkpoints"
    return any((p / "manifest.json").is_file() for p in root.glob("step_*")) if root.is_dir() else False


def _event(cfg: RunConfig, kind: str, name: str, count: int, why: str) -> None:
    with open(cfg.run.dir / "supervisor.jsonl", "a") as f:
        f.write(json.dumps({"time": time.time(), "event": kind, "process": name, "count": count,
                            "why": why}) + "\n")


def _supervise(children: list[Child], interrupted: threading.Event, cfg: RunConfig, log_dir: Path,
               sink: Sink) -> int:
    learner = next(c for c in children if c.name == "learner")
    while True:
        if interrupted.is_set():
            log.warning("interrupted: stopping all processes")
            return 130
        now = time.monotonic()
        for c in children:
            if c.restart_at is not None:
                if now >= c.restart_at:
                    c.restart_at = None
                    _spawn(c, log_dir, sink)
                continue
            code = c.proc.poll() if c.proc else None
            if code is None:
                continue
            if c is learner and code == 0:
                log.info("learner finished: stopping the other processes")
                return 0
            why = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
            if c.reader is not None:  # its last lines may still be in the pipe (a loaded machine)
                c.reader.join(timeout=2.0)
            last = "\n    ".join(c.tail[-8:])
            _reap_group(c)  # e.g. a killed generator's vLLM engine process, still holding its sockets
            if c.name.startswith(("reward-", "rollout-")) and c.restarts < cfg.run.max_restarts:
                c.restarts += 1
                delay = cfg.run.restart_backoff_s * 2 ** (c.restarts - 1)
                log.warning("%s %s; restarting it in %.0fs (restart %d of %d). Last lines:\n    %s", c.name, why,
                            delay, c.restarts, cfg.run.max_restarts, last)
                _event(cfg, "restart", c.name, c.restarts, why)
                c.restart_at = now + delay
                continue
            log.error("%s %s; stopping the run. Last lines:\n    %s", c.name, why, last)
            return LEARNER_DIED if c is learner else 1
        time.sleep(0.2)
