"""Chaos drill: kill -9 generators, reward workers and the learner of a real run at random moments,
resume, and check that every prompt was trained exactly once or is still accounted for.

One ``asyncrl up`` run of the tiny config (fresh tiny model and arithmetic data) with
checkpoints. At randomly chosen learner steps (seeded) it sends SIGKILL to the generator
(``--generator-kills``), the reward worker (``--reward-kills``) and the learner
(``--learner-kills``); each kill lands a random 0-1.5 s after its step. ``asyncrl up`` restarts
the generator and reward worker by itself; a kill whose target is down at that moment (an
earlier kill's restart still pending) is sent to the restarted process as soon as the launcher
starts it, and counted as a kill that landed during a restart. After a learner kill it stops the run, and this
script continues it with ``asyncrl up --resume``, as a user would. At the end it reads
``metrics.jsonl`` and the final checkpoint's data position and reports::

    trained twice        prompts trained more than once (must be 0)
    unaccounted          dispatched prompts neither trained nor outstanding (must be 0)

    asyncrl chaos                                   # 3 generator, 3 reward, 1 learner kill, 40 steps
    python benchmarks/chaos.py --steps 24 --generator-kills 1 --reward-kills 1 --learner-kills 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, table, tiny_sets, write_results  # noqa: E402
from benchmarks.launch import STARTED, Up, parent_pid, port_sets, read_jsonl  # noqa: E402

TARGETS = {"generator": "rollout-0", "reward": "reward-0", "learner": "learner"}


class Targets:
    """The drill's view of ``asyncrl up``'s children, from the launcher's output: each one's current
    pid (its latest ``started NAME (pid N)`` line), whether it serves (``ready``), the learner step.

    A kill is sent to the current pid only while that process is alive and still the launcher's
    child (read from /proc at kill time). A target that is down, killed or crashed with its restart
    still pending, gets the kill the moment the launcher starts it again: the kill lands during the
    restart, a case the run must survive, and the drill records it as such.
    """

    def __init__(self, launcher_pid: int = 0) -> None:
        self.launcher_pid = launcher_pid  # set once the launcher is started (lines may come first)
        self.pids: dict[str, int] = {}
        self.ready: set[str] = set()  # children up since their last start
        self.step = 0
        self.armed: dict[str, dict[str, Any]] = {}  # name -> the record of a kill waiting for its restart
        self.lock = threading.Lock()

    def feed(self, line: str) -> None:
        with self.lock:
            if m := STARTED.search(line):
                name, pid = m.group(1), int(m.group(2))
                self.pids[name] = pid
                self.ready.discard(name)
                if name in self.armed:
                    record = self.armed.pop(name)
                    record["landed_on_pid"] = pid if _sigkill(pid) else None
            if "[rollout-0]" in line and "weights v" in line and "applied" in line:
                self.ready.add("rollout-0")
            if m := re.search(r"\[learner\].* step (\d+)/", line):
                self.step = int(m.group(1))
                self.ready.add("learner")
                self.ready.add("reward-0")  # a step needs scored groups: the reward worker serves again

    def alive(self, name: str) -> bool:
        pid = self.pids.get(name)
        return pid is not None and parent_pid(pid) == self.launcher_pid

    def kill(self, name: str, record: dict[str, Any]) -> None:
        """SIGKILL ``name`` now, or at its restart when it is down (``record["during_restart"]``)."""
        with self.lock:
            self.ready.discard(name)
            if self.alive(name) and _sigkill(self.pids[name]):
                record.update(during_restart=False, landed_on_pid=self.pids[name])
                return
            record.update(during_restart=True, landed_on_pid=None, dead_pid=self.pids.get(name))
            self.armed[name] = record


def _sigkill(pid: int) -> bool:
    """SIGKILL ``pid``; False when it is already gone (it died since it was looked up)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def schedule(rng: random.Random, steps: int, kills: dict[str, int], checkpoint_every: int) -> list[tuple[int, str]]:
    """Distinct learner steps for every kill, a learner kill only once a checkpoint exists."""
    total = sum(kills.values())
    slots = rng.sample(range(3, steps - 2), total)
    events: list[tuple[int, str]] = []
    for what, n in kills.items():
        for _ in range(n):
            pool = [s for s in slots if what != "learner" or s > checkpoint_every]
            s = rng.choice(pool or slots)
            slots.remove(s)
            events.append((s, what))
    return sorted(events)


def accounting(run_dir: Path, train: Path, seed: int) -> dict[str, Any]:
    """Trained prompts vs the dispatcher's data position in the final checkpoint."""
    from asyncrl.data.dataset import load_prompts
    from learner.orchestrator.dispatcher import Dispatcher, Sampling, TokenizedPrompt

    steps = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "reward_mean" in r]
    trained = [p for r in steps for p in r["prompt_ids"]]
    final = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    state = json.loads((final / "state.json").read_text())["dispatcher"]
    prompts = [TokenizedPrompt(row.prompt_id, [], "", "") for row in load_prompts(train)]
    d = Dispatcher(prompts, prompts_per_step=1, max_staleness=0, sampling=Sampling(1, 1.0, 1), seed=seed)
    dispatched: list[int] = []
    for epoch in range(state["epoch"] + 1):
        order = [prompts[i].prompt_id for i in d._order(epoch)]
        dispatched += order[:state["cursor"]] if epoch == state["epoch"] else order
    pending = [int(p[0]) for p in state["pending"]]
    counts: dict[int, int] = {}
    for p in trained + pending:
        counts[p] = counts.get(p, 0) + 1
    want: dict[int, int] = {}
    for p in dispatched:
        want[p] = want.get(p, 0) + 1
    return {"steps": len(steps), "last_step": steps[-1]["step"], "trained": len(trained),
            "trained_twice": sum(max(0, c - want.get(p, 0)) for p, c in counts.items()),
            "unaccounted": sum(max(0, c - counts.get(p, 0)) for p, c in want.items()),
            "outstanding_at_end": len(pending), "last": steps[-1],
            "peak_rss_mb": max(r.get("peak_rss_mb_r0", 0.0) for r in steps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--generator-kills", type=int, default=3)
    ap.add_argument("--reward-kills", type=int, default=3)
    ap.add_argument("--learner-kills", type=int, default=1)
    ap.add_argument("--checkpoint-every", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args()
    kills = {"generator": args.generator_kills, "reward": args.reward_kills, "learner": args.learner_kills}
    rng = random.Random(args.seed)
    events = schedule(rng, args.steps, kills, args.checkpoint_every)
    print("kill schedule (learner step, process):", events, flush=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sets = tiny_sets(tmp_path) + [
            f"learner.checkpoint_every={args.checkpoint_every}", "learner.redispatch_after_s=30",
            "run.restart_backoff_s=1", f"run.max_restarts={max(kills.values()) + 1}", "learner.val_every=0",
            f"run.seed={args.seed}"]
        train = Path(next(s for s in sets if s.startswith("data.train=")).split("=", 1)[1])
        run_dir, log_path = tmp_path / "run", tmp_path / "up.log"
        done: list[dict[str, Any]] = []
        resumes = 0
        while True:
            targets = Targets()
            up = Up(REPO / "configs" / "tiny_cpu.toml", run_dir, sets + port_sets(), args.steps,
                    resume=resumes > 0, log=log_path, on_line=targets.feed)
            targets.launcher_pid = up.pid
            while up.proc.poll() is None:
                pending = [e for e in events if e not in [(d["at_step"], d["process"]) for d in done]]
                if pending and targets.step >= pending[0][0] and (
                        TARGETS[pending[0][1]] in targets.ready or not targets.alive(TARGETS[pending[0][1]])):
                    time.sleep(rng.uniform(0, 1.5))
                    at, what = pending[0]
                    record = {"at_step": at, "process": what, "learner_step": targets.step,
                              "time_s": round(time.monotonic() - t0, 1)}
                    targets.kill(TARGETS[what], record)
                    done.append(record)
                    when = " (down: lands on its restart)" if record["during_restart"] else ""
                    print(f"  kill -9 {TARGETS[what]} at learner step {targets.step}{when}", flush=True)
                time.sleep(0.2)
            code = up.wait(timeout_s=60)
            up.close()
            if code == 0:
                break
            if done and done[-1]["process"] == "learner" and resumes < args.learner_kills:
                resumes += 1
                print(f"  asyncrl up exited {code} after the learner kill: continuing with --resume", flush=True)
                continue
            raise SystemExit(f"asyncrl up failed ({code}); log:\n{log_path.read_text()[-4000:]}")
        acc = accounting(run_dir, train, args.seed)
        restarts = [json.loads(x) for x in (run_dir / "supervisor.jsonl").read_text().splitlines()] \
            if (run_dir / "supervisor.jsonl").is_file() else []
        wall = time.monotonic() - t0
    last = acc.pop("last")
    rows = [{"what": k, "value": v} for k, v in [
        ("kills (generator / reward / learner)", " / ".join(str(sum(d["process"] == w for d in done)) for w in kills)),
        ("kills that landed during a restart", sum(bool(d["during_restart"]) for d in done)),
        ("automatic restarts by asyncrl up", len(restarts)), ("resumes after a learner kill", resumes),
        ("steps reached", f"{acc['last_step']} of {args.steps}"), ("prompts trained", acc["trained"]),
        ("prompts trained twice", acc["trained_twice"]), ("dispatched prompts unaccounted for", acc["unaccounted"]),
        ("prompts outstanding at the end (in the checkpoint)", acc["outstanding_at_end"]),
        ("prompts re-dispatched (lost with a dead worker)", last["prompts_redispatched"]),
        ("late duplicate samples dropped", last["samples_duplicate_dropped"]),
        ("weight syncs retried", last.get("sync_failures", 0)), ("generator restarts seen by the learner",
                                                                last.get("generator_restarts", 0)),
        ("learner peak RSS (MiB)", round(acc["peak_rss_mb"])), ("wall time (s)", round(wall))]]
    md = table(rows, ["what", "value"]) + "\n\nkills: " + ", ".join(
        f"{d['process']} at step {d['learner_step']}" for d in done)
    print(md)
    write_results(args.out, "chaos", {"kills": done, "restarts": restarts, "resumes": resumes, **acc,
                                      "last_metrics": last, "wall_s": wall}, md)
    if acc["trained_twice"] or acc["unaccounted"] or acc["last_step"] != args.steps:
        raise SystemExit("chaos: accounting failed (see the table)")


if __name__ == "__main__":
    main()
