"""What a sandboxed run may use (:class:`Limits`) and what came of it (:class:`Result`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

LIMIT_NAMES = ("timeout", "cpu", "memory", "procs", "file_size", "output")
ISOLATION_KEYS = ("network_namespace", "mount_namespace", "pid_namespace", "unprivileged_user", "memory_cgroup",
                  "seccomp")


@dataclass(frozen=True)
class Limits:
    """Per-run limits. ``memory_mb`` caps the address space of each process (``RLIMIT_AS``, the interpreter's
    own ~10-30 MB included) and, where a memory cgroup can be made, the run's processes together (plus
    its tmpfs and 64 MB for the jail); ``cpu_s`` is per process; ``max_procs`` counts processes and threads
    of the run; ``file_mb`` is the largest file, and the working dir, /tmp and /dev/shm share a tmpfs of
    4x that. See docs/sandbox.md."""

    timeout_s: float = 10.0  # wall clock
    cpu_s: float = 10.0
    memory_mb: int = 512
    max_procs: int = 32
    file_mb: int = 16  # largest file the program may write
    output_kb: int = 64  # stdout and stderr each; beyond this the run is killed, limit_hit="output"

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kind = (int,) if field.type == "int" else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
                noun = "integer" if field.type == "int" else "number"
                raise ValueError(f"Limits.{field.name} must be a positive {noun}, got {value!r}")
        if self.memory_mb < 32:
            raise ValueError(f"Limits.memory_mb={self.memory_mb} is below the ~32 MB Python itself needs")


DEFAULT_LIMITS = Limits()


@dataclass
class Result:
    """One run. ``exit_code`` is None when the sandbox killed the program (timeout, output), negative for a
    signal (e.g. -24 SIGXCPU); ``limit_hit`` names the limit that ended it, if any."""

    exit_code: int | None
    stdout: str
    stderr: str
    time_s: float
    max_rss_mb: float
    limit_hit: str | None
    isolation: dict[str, bool]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.limit_hit is None
