"""The chaos drill's kill logic (benchmarks/chaos.py) without a run: which pid a scheduled kill
goes to, and a kill that lands while its target is down, its restart pending (``asyncrl chaos
--seed 11`` kills reward-0 at steps 31 and 32: the second kill used to go to the pid that died at
step 31 and crash the drill with ProcessLookupError). The full drill: ``asyncrl chaos``."""

from __future__ import annotations

import os
import random
import subprocess
import sys

from benchmarks.chaos import Targets, schedule


def _child() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _started(name: str, pid: int) -> str:
    return f"[asyncrl.up] started {name} (pid {pid})\n"


def test_kill_goes_to_the_current_pid() -> None:
    first, second = _child(), _child()
    try:
        t = Targets(os.getpid())  # this process plays the launcher: the children are its own
        t.feed(_started("reward-0", first.pid))
        t.feed(_started("reward-0", second.pid))  # restarted: the line names the new pid
        record: dict = {}
        t.kill("reward-0", record)
        assert record == {"during_restart": False, "landed_on_pid": second.pid}
        assert second.wait(10) == -9 and first.poll() is None
    finally:
        for p in (first, second):
            p.kill()
            p.wait()


def test_kill_while_down_lands_on_the_restart() -> None:
    """seed 11: reward-0 killed at step 31, again at step 32 before the launcher restarted it."""
    assert [e for e in schedule(random.Random(11), 40, {"generator": 3, "reward": 3, "learner": 1}, 5)
            if e[1] == "reward"][1:] == [(31, "reward"), (32, "reward")]
    dead, restarted = _child(), _child()
    try:
        t = Targets(os.getpid())
        t.feed(_started("reward-0", dead.pid))
        t.feed("[learner] step 31/40 reward_mean=0.5\n")
        at_31: dict = {}
        t.kill("reward-0", at_31)
        dead.wait(10)  # gone and reaped, as the launcher does before its restart back-off
        t.feed("[learner] step 32/40 reward_mean=0.5\n")  # the learner steps on groups already scored
        assert "reward-0" in t.ready and not t.alive("reward-0")
        at_32: dict = {}
        t.kill("reward-0", at_32)  # no ProcessLookupError: the kill waits for the restart
        assert at_32 == {"during_restart": True, "landed_on_pid": None, "dead_pid": dead.pid}
        assert restarted.poll() is None
        t.feed(_started("reward-0", restarted.pid))  # the launcher restarts it: the kill lands now
        assert restarted.wait(10) == -9
        assert at_32["landed_on_pid"] == restarted.pid and not t.armed
    finally:
        for p in (dead, restarted):
            p.kill()
            p.wait()


def test_a_pid_that_is_not_the_launchers_child_is_never_killed() -> None:
    other = _child()
    try:
        t = Targets(launcher_pid=1)  # another launcher: this pid is not its child (e.g. a reused pid)
        t.feed(_started("rollout-0", other.pid))
        record: dict = {}
        t.kill("rollout-0", record)
        assert record["during_restart"] is True and other.poll() is None
    finally:
        other.kill()
        other.wait()
