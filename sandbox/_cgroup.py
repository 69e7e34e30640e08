"""A memory cgroup per run, where the host lets us make one (stdlib only; used by the jail and the caller).

``RLIMIT_AS`` caps each process, so a run of ``max_procs`` processes could use ``max_procs x memory_mb``.
A cgroup caps them together: the jail makes a child of its own memory cgroup (v1 ``memory`` hierarchy, or
v2 where the ``memory`` controller is delegated) and moves its inner process into it before that one
forks the program, so every process of the run is in it;
past the limit the kernel's OOM killer kills inside the run only. The caller removes the cgroup once the
jail has exited (moving the jail out first would cost a second task migration, ~10 ms on cgroup v1).
Best effort: where no cgroup can be made the run goes on with the per-process limits alone and
``isolation["memory_cgroup"]`` is False.
"""

from __future__ import annotations

import os
import time

V1_ROOT, V2_ROOT = "/sys/fs/cgroup/memory", "/sys/fs/cgroup"
PREFIX = "asyncrl-sandbox-"
SLACK_MB = 64  # the jail's own two processes live in the cgroup too


def _parent(pid: int) -> tuple[str, str] | None:
    """The memory cgroup directory of ``pid`` and its version (``"v1"``/``"v2"``), or None."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return (V1_ROOT + path).rstrip("/"), "v1"
    for line in lines:
        if line.startswith("0::"):
            base = (V2_ROOT + line[3:]).rstrip("/")
            try:
                with open(base + "/cgroup.subtree_control") as f:
                    return (base, "v2") if "memory" in f.read().split() else None
            except OSError:
                return None
    return None


def path_for(jail_pid: int) -> str | None:
    """Where the cgroup of the jail with this pid lives, for the caller (the jail started in the caller's
    cgroup) to remove once the jail has exited."""
    parent = _parent(os.getpid())
    return f"{parent[0]}/{PREFIX}{jail_pid}" if parent else None


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def create(limit_mb: int) -> str | None:
    """Make the run's cgroup (named after this process) with ``limit_mb`` (+ slack); its path, or None."""
    parent = _parent(os.getpid())
    if parent is None:
        return None
    base, version = parent
    path = f"{base}/{PREFIX}{os.getpid()}"
    limit = str((limit_mb + SLACK_MB) << 20)
    try:
        os.mkdir(path)
        if version == "v1":
            _write(f"{path}/memory.limit_in_bytes", limit)
            if os.path.exists(f"{path}/memory.memsw.limit_in_bytes"):
                _write(f"{path}/memory.memsw.limit_in_bytes", limit)  # no swapping past it either
        else:
            _write(f"{path}/memory.max", limit)
            if os.path.exists(f"{path}/memory.swap.max"):
                _write(f"{path}/memory.swap.max", "0")
    except OSError:
        remove(path)
        return None
    return path


def add(path: str, pid: int) -> bool:
    """Move ``pid`` into the run's cgroup (its future children follow); whether that worked."""
    try:
        _write(f"{path}/cgroup.procs", str(pid))
    except OSError:
        return False
    return True


def oom_killed(path: str) -> bool:
    """Whether the OOM killer killed anything in the run's cgroup."""
    for name in ("memory.oom_control", "memory.events"):  # v1, v2: a line "oom_kill N"
        try:
            with open(f"{path}/{name}") as f:
                counts = dict(line.split() for line in f.read().splitlines() if line.count(" ") == 1)
        except OSError:
            continue
        return int(counts.get("oom_kill", 0)) > 0
    return False


def remove(path: str, wait_s: float = 2.0) -> None:
    """``rmdir`` the cgroup, retrying while killed processes finish dying (EBUSY)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
