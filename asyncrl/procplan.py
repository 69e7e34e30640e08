"""The processes of a run: their command lines, devices and addresses, in one place.

``asyncrl up`` starts what :func:`processes` lists; ``asyncrl up --dry-run`` prints it
(:func:`describe_plan`); ``asyncrl learner`` with ``learner.world_size > 1`` starts
torchrun with :func:`torchrun_argv` (across ``learner.nnodes`` hosts: one such command per
node, ``--node-rank R``)::

    for p in processes(cfg, Path("run.toml"), []):
        print(p.name, p.argv, p.env)
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from asyncrl.config import ConfigError, RunConfig
from asyncrl.placement import Plan, describe, make_plan


@dataclass
class Process:
    name: str  # learner, rollout-I, reward-J
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # the placement part of its environment


def role_argv(role: str, config_path: Path, overrides: list[str], index: int | None = None) -> list[str]:
    sets = [a for ov in overrides for a in ("--set", ov)]
    extra = ["--index", str(index)] if index is not None else []
    return [sys.executable, "-m", "cli.main", role, str(config_path)] + extra + sets


def processes(cfg: RunConfig, config_path: Path, overrides: list[str], plan: Plan | None = None) -> list[Process]:
    """Every process ``asyncrl up`` starts on this host, in start order (reward workers first)."""
    plan = plan or make_plan(cfg)
    out = [Process(f"reward-{i}", role_argv("reward", config_path, overrides, i))
           for i in range(cfg.reward.num_workers)]
    out.append(Process("learner", role_argv("learner", config_path, overrides)))
    out += [Process(f"rollout-{i}", role_argv("rollout", config_path, overrides, i))
            for i in range(cfg.rollout.num_generators)]
    for p in out:
        p.env = plan.env.get(p.name, {})
    return out


def torchrun_argv(cfg: RunConfig, config_path: Path, overrides: list[str], node_rank: int) -> list[str]:
    """torchrun for this node's learner ranks; each rank runs ``cli.main learner`` (which then sees RANK)."""
    lr = cfg.learner
    if not 0 <= node_rank < lr.nnodes:
        raise ConfigError(f"--node-rank {node_rank} out of range: learner.nnodes={lr.nnodes}")
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(lr.world_size // lr.nnodes),
            "--max-restarts", "0"]
    if lr.nnodes == 1:
        argv += ["--standalone"]
    else:  # static rendezvous: node ranks are what the command line says (node 0 hosts rank 0)
        argv += ["--nnodes", str(lr.nnodes), "--node-rank", str(node_rank), "--rdzv-backend", "static",
                 "--rdzv-endpoint", str(lr.rdzv_endpoint), "--rdzv-conf",
                 f"timeout={int(lr.rendezvous_timeout_s)}"]
    return argv + ["-m"] + role_argv("learner", config_path, overrides)[2:]


def check_model_fits(cfg: RunConfig) -> None:
    """``rollout.tensor_parallel_size`` must divide the model's attention and KV heads (vLLM shards them)."""
    tp = cfg.rollout.tensor_parallel_size
    if tp == 1:
        return
    path = Path(cfg.model.path) / "config.json"
    try:
        hf = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # the model directory check names a missing or broken config.json
    hf = hf.get("text_config", hf)
    heads = hf.get("num_attention_heads")
    kv = hf.get("num_key_value_heads", heads)
    if heads and heads % tp:
        raise ConfigError(f"rollout.tensor_parallel_size={tp} does not divide the model's {heads} attention heads "
                          f"({path}); choose a divisor of {heads}")
    if kv and kv % tp and tp % kv:
        raise ConfigError(f"rollout.tensor_parallel_size={tp} cannot shard the model's {kv} KV heads ({path}): "
                          f"it must divide them or be a multiple of them")


def describe_plan(cfg: RunConfig, config_path: Path, overrides: list[str]) -> str:
    """What ``asyncrl up --dry-run`` prints: every process, its command line, devices and addresses."""
    import shlex

    plan = make_plan(cfg)
    t, lr = cfg.transport, cfg.learner
    lines = [f"placement: {plan.kind}, {len(plan.visible)} {'GPU(s)' if plan.kind == 'cuda' else 'CPU core(s)'} "
             f"visible ({','.join(plan.visible)})"]
    binds = {"learner": f"binds dispatch {t.dispatch}, trajectories {t.trajectories}; hosts the weight-sync "
                        f"store {cfg.weight_sync.address}"}
    binds.update({f"reward-{i}": f"binds {a}; pushes to {t.trajectories}" for i, a in enumerate(t.rewards)})
    for i in range(cfg.rollout.num_generators):
        binds[f"rollout-{i}"] = (f"connects {t.dispatch}, pushes to {', '.join(t.rewards)}; joins the weight-sync "
                                 f"store {cfg.weight_sync.address} with {cfg.rollout.tensor_parallel_size} rank(s)")
    for p in processes(cfg, config_path, overrides, plan):
        lines += [f"{p.name}: {describe(plan, p.name)}", f"  command: {shlex.join(p.argv)}"]
        if p.name == "learner" and lr.world_size > 1:
            for node in range(lr.nnodes):
                where = "this host" if node == 0 else f"learner node {node}"
                lines.append(f"  starts ({where}): {shlex.join(torchrun_argv(cfg, config_path, overrides, node))}")
        if p.env:
            lines.append("  env: " + " ".join(f"{k}={v}" for k, v in sorted(p.env.items())))
        lines.append(f"  {binds[p.name]}")
    if t.curve_dir is not None:
        lines.append(f"CURVE keys: {t.curve_dir}")
    return "\n".join(lines)

