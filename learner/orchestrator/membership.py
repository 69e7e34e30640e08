"""Which generators are alive, which incarnation each is, and which weights each serves.

The one place that decides membership; the I/O pump feeds it what generators say, the weight
syncer reads it to form its group, the orchestrator's waits watch it for changes. Rules:

- ``hello`` (first, or again after a restart) makes a generator a member under a new
  incarnation; until it reports ``synced`` for the current weights it gets no prompt (the
  caller holds it in the :class:`~learner.orchestrator.dispatcher.Dispatcher`). A hello from an
  identity seen before counts as a restart.
- A member silent for ``liveness.generator_timeout_s`` is declared gone; if it speaks again it
  is told to ``rejoin`` (say hello again).
- Only ``gen-0 .. gen-{N-1}`` may join, and a hello must name the index its identity says.

Not thread-safe by itself: every call happens under the orchestrator's lock
(:class:`~learner.orchestrator.state.OrchestratorState`).
"""

from __future__ import annotations

import logging

from learner.orchestrator.counters import Counters

log = logging.getLogger("learner.membership")

Members = dict[bytes, int]  # generator identity -> incarnation


def generator_identity(index: int, num_generators: int) -> bytes | None:
    """The transport identity generator ``index`` uses; None for an index out of range."""
    return f"gen-{index}".encode() if 0 <= index < num_generators else None


def name(gen: bytes) -> str:
    return gen.decode(errors="replace")


class Membership:
    def __init__(self, num_generators: int, timeout_s: float, counters: Counters) -> None:
        self.identities = {generator_identity(i, num_generators) for i in range(num_generators)}
        self.num_generators, self.timeout_s, self.counters = num_generators, timeout_s, counters
        self.members: Members = {}  # live generators -> incarnation (bumped by each hello)
        self.incarnations: dict[bytes, int] = {}
        self.last_seen: dict[bytes, float] = {}
        self.synced: dict[bytes, int] = {}  # member -> newest weights version it serves
        self.sync_failed: dict[bytes, tuple[int, str]] = {}  # member -> (version, why) it could not apply

    def snapshot(self) -> Members:
        return dict(self.members)

    def is_member(self, gen: bytes) -> bool:
        return gen in self.members

    def is_ours(self, gen: bytes) -> bool:
        """One of this run's generator identities (a non-member of ours was declared gone)."""
        return gen in self.identities

    def claims_own_index(self, gen: bytes, index: int) -> bool:
        """A hello's ``generator`` index matches the identity it came from."""
        return gen == generator_identity(index, self.num_generators)

    def seen(self, gen: bytes, now: float) -> None:
        self.last_seen[gen] = now

    def hello(self, gen: bytes, known_before: bool) -> None:
        """``gen`` (re)joined. ``known_before``: the dispatcher served it already (a restart even
        when it had been declared gone)."""
        if gen in self.members or known_before:
            self.counters.generator_restarts += 1
            log.warning("%s said hello again (restarted): its prompts in flight are dispatched again", name(gen))
        self.incarnations[gen] = self.incarnations.get(gen, 0) + 1
        self.members[gen] = self.incarnations[gen]
        self.synced.pop(gen, None)

    def silent(self, now: float) -> list[bytes]:
        """Members that sent nothing for longer than the timeout."""
        return [g for g in self.members if now - self.last_seen.get(g, now) > self.timeout_s]

    def declare_gone(self, gen: bytes) -> None:
        log.warning("%s sent nothing for %.0fs (liveness.generator_timeout_s): declared gone", name(gen),
                    self.timeout_s)
        del self.members[gen]
        self.synced.pop(gen, None)
        self.counters.generators_gone += 1

    def mark_synced(self, gen: bytes, version: int) -> None:
        self.synced[gen] = version

    def mark_sync_failed(self, gen: bytes, version: int, why: str) -> None:
        self.sync_failed[gen] = (version, why)
        log.warning("%s could not apply weights v%d: %s", name(gen), version, why)

    def take_sync_failures(self, members: Members, version: int) -> dict[bytes, str]:
        """Failures ``members`` reported for ``version``; each is reported once."""
        failed = {g: why for g, (v, why) in self.sync_failed.items() if g in members and v == version}
        for g in failed:
            del self.sync_failed[g]
        return failed

    def all_serve(self, members: Members, version: int) -> bool:
        return all(self.synced.get(g, -1) >= version for g in members)
