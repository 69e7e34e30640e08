"""Micro-batches built by a token budget, and balanced shares for data-parallel ranks.

A micro-batch is a list of sample indices. With a token budget, samples are taken in
length order and a micro-batch closes when one more sample would exceed the budget:
the packed cost of a micro-batch is the sum of its lengths, the padded cost is
``count * longest``. A sample longer than the budget gets a micro-batch of its own.
"""

from __future__ import annotations


def cost(lengths: list[int], idx: list[int], packed: bool) -> int:
    """Tokens a forward pass over ``idx`` computes on."""
    if not idx:
        return 0
    return sum(lengths[i] for i in idx) if packed else len(idx) * max(lengths[i] for i in idx)


def micro_batches(lengths: list[int], *, max_samples: int, max_tokens: int | None = None,
                  packed: bool = False) -> list[list[int]]:
    """Indices grouped by length so each micro-batch pads little (or packs to the budget).

    ``max_samples`` always caps a micro-batch; ``max_tokens`` (when set) caps its cost.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        over_count = len(cur) >= max_samples
        over_tokens = max_tokens is not None and cur and cost(lengths, cur + [i], packed) > max_tokens
        if cur and (over_count or over_tokens):
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def split_for_ranks(lengths: list[int], world_size: int) -> list[list[int]]:
    """Share samples among ranks so each gets a similar number of tokens (greedy, longest
    first onto the lightest rank); every rank gets at least one sample when there are enough."""
    if world_size <= 1:
        return [list(range(len(lengths)))]
    if len(lengths) < world_size:
        raise ValueError(f"{len(lengths)} samples cannot be shared among {world_size} ranks")
    shares: list[list[int]] = [[] for _ in range(world_size)]
    loads = [0] * world_size
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = min(range(world_size), key=lambda k: (loads[k], len(shares[k])))
        shares[r].append(i)
        loads[r] += lengths[i]
    return [sorted(s) for s in shares]


def rank_micro_batches(lengths: list[int], world: int, rank: int, *, max_samples: int,
                       max_tokens: int | None = None, packed: bool = False) -> list[list[int]]:
    """This rank's micro-batches (indices into ``lengths``) when ``world`` ranks share a batch.

    FSDP2 needs every rank to run the same number of forward/backward passes, so every rank
    computes every rank's list (the same on all ranks) and pads the shorter ones with ``[]``:
    a pass to run on any one sample with zero weight. With fewer samples than ranks, the
    ranks without a sample get only such passes.
    """
    if len(lengths) >= world:
        shares = split_for_ranks(lengths, world)
    else:
        shares = [[i] if i < len(lengths) else [] for i in range(world)]
    per_rank = []
    for share in shares:
        mbs = micro_batches([lengths[i] for i in share], max_samples=max_samples, max_tokens=max_tokens,
                            packed=packed) if share else []
        per_rank.append([[share[j] for j in mb] for mb in mbs])
    longest = max(1, max(len(c) for c in per_rank))
    return per_rank[rank] + [[] for _ in range(longest - len(per_rank[rank]))]
