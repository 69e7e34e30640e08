"""Which node of a Slurm allocation runs each process, and which of its GPUs it gets.

Learner node r is allocation node r (node 0 is the one every address points at); generators,
then reward models, take GPUs first-fit, the learner nodes' spare GPUs included; function
reward workers need no GPU and go round-robin over the nodes without a learner (all nodes
when there are none)::

    nodes, steps = place(cfg, gpus_per_node=8)   # raises DeployError naming the option
"""

from __future__ import annotations

from dataclasses import dataclass

from asyncrl.config import RunConfig
from cli.deploy.common import DeployError, Needs, needs


@dataclass
class Step:
    """One srun step: ``name`` (learner, rollout-I, reward-J) on allocation nodes ``nodes``."""

    name: str
    nodes: list[int]
    gpus: list[int]  # CUDA ids on each of its nodes; empty on CPU or without a GPU


def place(cfg: RunConfig, gpus_per_node: int) -> tuple[int, list[Step]]:
    """The node count this run fills and one step per process (learner, generators, reward workers)."""
    need = needs(cfg, gpu=gpus_per_node > 0)
    _check_fits(cfg, need, gpus_per_node)
    lr = cfg.learner
    steps = [Step("learner", list(range(lr.nnodes)), list(range(need.learner_per_node)) if need.gpu else [])]
    free = [gpus_per_node - need.learner_per_node if need.gpu else 0] * lr.nnodes
    for i in range(cfg.rollout.num_generators):
        steps.append(_take(f"rollout-{i}", need.generator if need.gpu else None, free, gpus_per_node))
    rewards = [f"reward-{j}" for j in range(cfg.reward.num_workers)]
    if need.reward:
        steps += [_take(name, need.reward, free, gpus_per_node) for name in rewards]
    else:
        hosts = list(range(lr.nnodes, len(free))) or list(range(len(free)))
        steps += [Step(name, [hosts[j % len(hosts)]], []) for j, name in enumerate(rewards)]
    return len(free), steps


def _take(name: str, count: int | None, free: list[int], gpus_per_node: int) -> Step:
    """First node with ``count`` free GPUs (a new node when none has); None: a CPU node of its own."""
    if count is None:
        free.append(0)
        return Step(name, [len(free) - 1], [])
    node = next((n for n, left in enumerate(free) if left >= count), None)
    if node is None:
        free.append(gpus_per_node)
        node = len(free) - 1
    first = gpus_per_node - free[node]
    free[node] -= count
    return Step(name, [node], list(range(first, first + count)))


def _check_fits(cfg: RunConfig, need: Needs, gpus_per_node: int) -> None:
    if not need.gpu:
        return
    lr = cfg.learner
    if need.learner_per_node > gpus_per_node:
        raise DeployError(f"--gpus-per-node {gpus_per_node} is fewer than the learner's {need.learner_per_node} "
                          f"rank(s) per node (learner.world_size={lr.world_size} / learner.nnodes={lr.nnodes}); "
                          f"raise --gpus-per-node or learner.nnodes (--learner-nodes)")
    if need.generator > gpus_per_node:
        raise DeployError(f"--gpus-per-node {gpus_per_node} is fewer than rollout.tensor_parallel_size="
                          f"{need.generator} (a generator's GPUs must be on one node)")


def check_node_count(nodes: int | None, used: int, steps: list[Step]) -> None:
    """``--nodes`` must be the count the layout fills: fewer cannot run, more would sit idle."""
    if nodes is None or nodes == used:
        return
    detail = "; ".join(f"{s.name} on node {','.join(map(str, s.nodes))}" for s in steps)
    if nodes < used:
        raise DeployError(f"--nodes {nodes} is fewer than the {used} this run needs ({detail})")
    raise DeployError(f"--nodes {nodes}: this run fills {used} node(s) ({detail}); the rest would sit idle "
                      f"(add generators with rollout.num_generators, or drop --nodes)")
