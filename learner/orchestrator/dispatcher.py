"""Prompt dispatch with admission control (pure logic, no sockets).

Staleness bound: a group is dispatched to a generator reporting policy version ``g``
only while ``train groups dispatched < (g + max_staleness + 1) * prompts_per_step``
(AReaL's rule). Together with the learner training the oldest groups first (see
:class:`learner.orchestrator.buffer.GroupBuffer`), every group is trained at a learner version at
most ``max_staleness`` above the version that generated it. ``max_staleness = 0`` is
synchronous on-policy training. Validation prompts bypass admission: they are scored,
never trained on.

Every train dispatch carries a sampling ``seed`` drawn from (run seed, epoch, prompt id),
so a prompt's samples do not depend on which generator or batch they land in. Dispatched
groups stay *outstanding* until the learner settles them (trained or deliberately
dropped); :meth:`Dispatcher.state` saves the position in the data plus every outstanding
prompt, and :meth:`Dispatcher.restore` re-dispatches those first after a resume.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from asyncrl.evaluation import sample_seed
from asyncrl.transport.items import PromptItem
from learner.orchestrator.counters import Counters


@dataclass(frozen=True)
class TokenizedPrompt:
    prompt_id: int
    token_ids: list[int]
    data_source: str
    ground_truth: str


@dataclass
class Sampling:
    n: int
    temperature: float
    max_tokens: int
    greedy_baseline: bool = False  # ReMax: also generate one greedy reply per prompt


@dataclass
class InFlight:
    generator: bytes
    version_bound: int
    prompt_id: int
    sent_at: float = 0.0


@dataclass(frozen=True)
class Dispatch:
    """What re-dispatching a prompt needs: the same prompt and seed, the next attempt."""

    prompt_id: int
    seed: int
    attempt: int = 0


def prompt_seed(run_seed: int, epoch: int, prompt_id: int) -> int:
    """A 31-bit sampling seed for one dispatch of a prompt."""
    return random.Random(f"{run_seed}/{epoch}/{prompt_id}").getrandbits(31)


class Dispatcher:
    def __init__(self, prompts: list[TokenizedPrompt], *, prompts_per_step: int, max_staleness: int,
                 sampling: Sampling, seed: int, shuffle: bool = True, counters: Counters | None = None) -> None:
        if not prompts:
            raise ValueError("no training prompts to dispatch")
        self.prompts, self.B, self.s = prompts, prompts_per_step, max_staleness
        self.sampling, self.seed, self.shuffle = sampling, seed, shuffle
        self.epoch, self.cursor = 0, 0
        self.order = self._order(0)
        self.dispatched_train = 0
        self.discarded = 0  # groups dropped by dynamic sampling: their slots are handed out again
        self.next_group_id = 0
        self.credits: dict[bytes, int] = {}
        self.versions: dict[bytes, int] = {}
        self.inflight: dict[int, InFlight] = {}
        self.val_queue: deque[PromptItem] = deque()
        self.by_id = {p.prompt_id: p for p in prompts}
        self.outstanding: dict[int, Dispatch] = {}  # group id -> dispatch, until trained or dropped
        self.redo: deque[Dispatch] = deque()  # dispatched before new prompts (lost or resumed ones)
        # prompts_redispatched and samples_lost are counted here (a shared record: see counters.py)
        self.counters = counters if counters is not None else Counters()
        self.held: set[bytes] = set()  # generators that get nothing until they serve the current weights
        self.val_inflight: dict[int, tuple[bytes, PromptItem]] = {}  # validation group -> (generator, item)

    def _order(self, epoch: int) -> list[int]:
        idx = list(range(len(self.prompts)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(idx)
        return idx

    def _next_prompt(self) -> Dispatch:
        if self.redo:
            return self.redo.popleft()
        if self.cursor == len(self.order):
            self.epoch += 1
            self.order, self.cursor = self._order(self.epoch), 0
        p = self.prompts[self.order[self.cursor]]
        self.cursor += 1
        return Dispatch(p.prompt_id, prompt_seed(self.seed, self.epoch, p.prompt_id))

    def update(self, gen: bytes, version: int, credit: int = 0) -> None:
        self.versions[gen] = max(version, self.versions.get(gen, 0))
        self.credits[gen] = self.credits.get(gen, 0) + credit

    def admissible(self, version: int) -> int:
        """How many more train groups a generator at ``version`` may receive now."""
        return max(0, (version + self.s + 1) * self.B + self.discarded - self.dispatched_train)

    def discard(self, groups: int) -> None:
        """Groups that arrived but will never be trained (dynamic sampling, stale drop) free their slots."""
        self.discarded += groups

    def take(self, gen: bytes) -> list[PromptItem]:
        """Items to send to ``gen`` now: validation first, then admitted train prompts."""
        items: list[PromptItem] = []
        if gen in self.held:
            return items
        credit = self.credits.get(gen, 0)
        while credit and self.val_queue:
            item = self.val_queue.popleft()
            self.val_inflight[item.group_id] = (gen, item)
            items.append(item)
            credit -= 1
        n_train = min(credit, self.admissible(self.versions.get(gen, 0)))
        for _ in range(n_train):
            items.append(self._train_item(gen))
        self.credits[gen] = credit - n_train
        return items

    def _train_item(self, gen: bytes) -> PromptItem:
        d = self._next_prompt()
        p = self.by_id[d.prompt_id]
        gid = self._new_group_id()
        self.dispatched_train += 1
        self.inflight[gid] = InFlight(gen, self.versions.get(gen, 0), p.prompt_id, time.monotonic())
        self.outstanding[gid] = d
        s = self.sampling
        return _item(p, gid, "train", s.n, s.temperature, s.max_tokens, seed=d.seed, attempt=d.attempt,
                     greedy_baseline=s.greedy_baseline)

    def settle(self, group_ids: list[int]) -> None:
        """These groups were trained on (or deliberately dropped): never dispatch them again."""
        for gid in group_ids:
            self.outstanding.pop(gid, None)

    def lose(self, group_ids: list[int]) -> int:
        """Give up on in-flight groups (their worker died or they timed out): dispatch each
        prompt again (same seed, next attempt) before new ones; a late arrival of the old
        group is then a duplicate. Returns how many were re-queued."""
        again = []
        for gid in group_ids:
            self.inflight.pop(gid, None)
            d = self.outstanding.pop(gid, None)
            if d is not None:
                again.append(Dispatch(d.prompt_id, d.seed, d.attempt + 1))
        self.redo.extendleft(reversed(again))
        self.discarded += len(again)  # their admission slots are handed out again
        self.counters.prompts_redispatched += len(again)
        self.counters.samples_lost += len(again) * self.sampling.n
        return len(again)

    def hold_generator(self, gen: bytes) -> list[int]:
        """``gen`` (re)started or vanished: it gets nothing until it serves the current weights, its
        old credits are void, its validation prompts go back to the queue. Returns its in-flight
        train groups, for the caller to :meth:`lose`."""
        self.held.add(gen)
        self.credits[gen] = 0
        back = [self.val_inflight.pop(g)[1] for g, (owner, _) in list(self.val_inflight.items()) if owner == gen]
        self.val_queue.extendleft(reversed(back))
        return self.of_generator(gen)

    def release_generator(self, gen: bytes) -> None:
        """``gen`` serves the current weights: it may receive prompts again."""
        self.held.discard(gen)

    def val_arrived(self, group_id: int) -> None:
        self.val_inflight.pop(group_id, None)

    def expired(self, older_than_s: float) -> list[int]:
        """In-flight groups dispatched more than ``older_than_s`` ago."""
        now = time.monotonic()
        return [g for g, f in self.inflight.items() if now - f.sent_at > older_than_s and g in self.outstanding]

    def of_generator(self, gen: bytes) -> list[int]:
        """In-flight train groups handed to ``gen``."""
        return [g for g, f in self.inflight.items() if f.generator == gen and g in self.outstanding]

    def state(self) -> dict[str, Any]:
        """JSON-able position in the data: what a resumed dispatcher needs."""
        pending = [self.outstanding[g] for g in sorted(self.outstanding)]
        return {"epoch": self.epoch, "cursor": self.cursor, "next_group_id": self.next_group_id,
                "pending": [[d.prompt_id, d.seed, d.attempt] for d in list(self.redo) + pending]}

    def restore(self, state: dict[str, Any], version: int) -> None:
        """Continue from :meth:`state` with the learner at ``version``: outstanding prompts first,
        then the data where it stopped. Admission restarts as if ``version`` steps of groups had
        been dispatched and trained."""
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.order = self._order(self.epoch)
        self.next_group_id = int(state["next_group_id"])
        self.redo = deque(Dispatch(int(x[0]), int(x[1]), int(x[2]) if len(x) > 2 else 0)
                          for x in state["pending"] if int(x[0]) in self.by_id)
        self.dispatched_train, self.discarded = version * self.B, 0
        self.inflight.clear()
        self.outstanding.clear()

    def _new_group_id(self) -> int:
        gid = self.next_group_id
        self.next_group_id += 1
        return gid

    def add_validation(self, prompts: list[TokenizedPrompt], max_tokens: int, n: int = 1, temperature: float = 0.0,
                       scope: str | None = None) -> list[int]:
        """Queue validation prompts (greedy single-sample by default); return their group ids.
        Sampled ones (``temperature > 0``) carry a seed per (run seed, ``scope``, prompt): every
        validation of a run, and a resumed one, draws alike."""
        gids = []
        for p in prompts:
            gid = self._new_group_id()
            seed = sample_seed(self.seed, scope or "val", p.prompt_id) if temperature > 0 else None
            self.val_queue.append(_item(p, gid, "val", n, temperature, max_tokens, seed=seed))
            gids.append(gid)
        return gids

    def arrived(self, group_id: int) -> InFlight | None:
        """Mark a train group as returned; None if it was not in flight (duplicate/foreign)."""
        return self.inflight.pop(group_id, None)

    def min_inflight_bound(self) -> int | None:
        return min((f.version_bound for f in self.inflight.values()), default=None)


def _item(p: TokenizedPrompt, gid: int, split: str, n: int, temperature: float, max_tokens: int,
          **extra: Any) -> PromptItem:
    return PromptItem(prompt_id=p.prompt_id, group_id=gid, split=split, data_source=p.data_source,
                      ground_truth=p.ground_truth, prompt_token_ids=p.token_ids, n=n, temperature=temperature,
                      max_tokens=max_tokens, **extra)
