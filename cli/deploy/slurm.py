"""``asyncrl deploy slurm``: one sbatch script that runs a whole run in one allocation.

The learner is one srun step with a task per learner node (``asyncrl learner --node-rank R``,
which starts torchrun across them); each generator and reward worker is a step of its own on
the node :mod:`cli.deploy.layout` gives it, pinned to its GPUs with
``CUDA_VISIBLE_DEVICES``. Every step reads the same config; ``--set`` overrides fill in
the addresses from the allocation's host names, and CURVE keys come from a shared path.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from asyncrl.config import RunConfig
from asyncrl.placement import APPLIED
from cli.deploy.common import DeployError, check_config, check_ports, learner_ports, port, rdzv_port, render
from cli.deploy.layout import Step, check_node_count, place

DEFAULT_GPUS_PER_NODE = 8
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # Slurm's [days-]hours[:minutes[:seconds]] and minutes


@dataclass
class SlurmOptions:
    """What the script asks of Slurm; None: left to the cluster's defaults (or derived from the config)."""

    nodes: int | None = None  # must equal the count the layout fills
    gpus_per_node: int | None = None  # None: 8 on GPU runs, 0 when placement.device = "cpu"
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    job_name: str = "asyncrl"
    curve_dir: Path | None = None  # None: transport.curve_dir, else <run.dir>/curve
    workdir: Path = field(default_factory=Path.cwd)  # the job's directory; relative paths are relative to it
    python: str = sys.executable  # the interpreter every node runs `-m cli.main` with
    sets: list[str] = field(default_factory=list)  # the caller's --set overrides, passed to every step
    script: str = "asyncrl.sbatch"  # name shown in the "Submit:" line


def render_slurm(cfg: RunConfig, config_path: Path, opts: SlurmOptions) -> str:
    """The sbatch script for ``cfg``; raises DeployError naming an option or key that cannot work."""
    check_config(cfg, opts.sets, "slurm")
    gpus = _gpus_per_node(cfg, opts.gpus_per_node)
    used, steps = place(cfg, gpus)
    check_node_count(opts.nodes, used, steps)
    _check_ports(cfg, steps)
    _check_options(opts)
    workdir = opts.workdir.resolve()
    curve = opts.curve_dir or cfg.transport.curve_dir or cfg.run.dir / "curve"
    return render("slurm.sbatch", {
        "config": shlex.quote(str(_absolute(config_path, workdir))), "workdir": shlex.quote(str(workdir)),
        "summary": _summary(cfg, used, gpus), "script": opts.script, "job_name": opts.job_name, "nodes": used,
        "sbatch_options": _sbatch_options(opts, gpus), "asyncrl": f"{shlex.quote(opts.python)} -m cli.main",
        "curve_dir": shlex.quote(str(_absolute(curve, workdir))), "max_restarts": cfg.run.max_restarts,
        "backoff_s": cfg.run.restart_backoff_s, "sets": _sets(cfg, steps, opts.sets),
        "steps": "\n\n".join(_step(cfg, s, gpus > 0) for s in _ordered(steps)),
    })


def _check_options(opts: SlurmOptions) -> None:
    """Values that end up in #SBATCH lines must be ones Slurm reads."""
    for key, value in (("--partition", opts.partition), ("--account", opts.account), ("--job-name", opts.job_name)):
        if value is not None and not re.fullmatch(r"[\w.,-]+", value):
            raise DeployError(f"{key} {value!r}: not a Slurm {key[2:]} (letters, digits, '_', '-', '.', ',')")
    if opts.time is not None and not _TIME.match(opts.time):
        raise DeployError(f"--time {opts.time!r}: expected minutes, H:MM:SS or D-HH:MM:SS")
    if not re.fullmatch(r"[\w./@+-]+", str(opts.workdir.resolve())):
        raise DeployError(f"working directory {opts.workdir.resolve()}: #SBATCH --chdir cannot hold spaces or "
                          f"shell characters; render from another directory")


def _gpus_per_node(cfg: RunConfig, given: int | None) -> int:
    device = cfg.placement.device
    if given is None:
        return 0 if device == "cpu" else DEFAULT_GPUS_PER_NODE
    if given < 0:
        raise DeployError(f"--gpus-per-node {given}: expected 0 (CPU nodes) or more")
    if given > 0 and device == "cpu":
        raise DeployError(f"--gpus-per-node {given} does not apply: placement.device = 'cpu'")
    if given == 0 and device == "cuda":
        raise DeployError("--gpus-per-node 0 does not apply: placement.device = 'cuda' needs GPU nodes")
    return given


def _absolute(path: Path, workdir: Path) -> Path:
    return path if path.is_absolute() else workdir / path


def _summary(cfg: RunConfig, nodes: int, gpus: int) -> str:
    lr, ro = cfg.learner, cfg.rollout
    per = f"{gpus} GPUs" if gpus else "CPUs only"
    return (f"{nodes} node(s) ({per} each): learner {lr.world_size} rank(s) on {lr.nnodes} node(s), "
            f"{ro.num_generators} generator(s) (tensor_parallel_size {ro.tensor_parallel_size}), "
            f"{cfg.reward.num_workers} reward worker(s) ({cfg.reward.type}).")


def _sbatch_options(opts: SlurmOptions, gpus: int) -> str:
    lines = [f"#SBATCH --gpus-per-node={gpus}"] if gpus else []
    lines += [f"#SBATCH --{key}={value}" for key, value in
              (("partition", opts.partition), ("account", opts.account), ("time", opts.time)) if value]
    return "\n".join(lines)


def _host(node: int) -> str:
    return f"${{NODES[{node}]}}"


def _sets(cfg: RunConfig, steps: list[Step], user_sets: list[str]) -> str:
    """``--set`` lines: the caller's, then the addresses filled in from the allocation."""
    t, head = cfg.transport, _host(0)
    nodes = {s.name: s.nodes[0] for s in steps}
    rewards = ", ".join(f'\\"{_host(nodes[f"reward-{j}"])}:{port(a)}\\"' for j, a in enumerate(t.rewards))
    filled = [f'"transport.{key}=\\"{head}:{port(getattr(t, key))}\\""'
              for key in ("dispatch", "trajectories")]
    filled.append(f'"weight_sync.address=\\"{head}:{port(cfg.weight_sync.address)}\\""')
    filled += [f'"transport.rewards=[{rewards}]"', "'transport.bind_host=\"0.0.0.0\"'",
               '"transport.curve_dir=\\"$CURVE_DIR\\""']
    if cfg.learner.nnodes > 1:
        filled.append(f'"learner.rdzv_endpoint=\\"{head}:{rdzv_port(cfg)}\\""')
    return "\n".join(f"  --set {s}" for s in [shlex.quote(s) for s in user_sets] + filled)


def _ordered(steps: list[Step]) -> list[Step]:
    """Reward workers, the learner, then generators (the order `asyncrl up` starts them in)."""
    rank = {"reward": 0, "learner": 1, "rollout": 2}
    return sorted(steps, key=lambda s: rank[s.name.split("-")[0]])


def _step(cfg: RunConfig, step: Step, gpu: bool) -> str:
    """The srun line of one step, backgrounded (learner: its pid kept; others: restarted by keep)."""
    n = len(step.nodes)
    srun = (f'srun --overlap --nodes={n} --ntasks={n} --ntasks-per-node=1 '
            f'--nodelist="{",".join(_host(node) for node in step.nodes)}" \\\n  ')
    if gpu:
        srun += f"env CUDA_VISIBLE_DEVICES={','.join(map(str, step.gpus))} {APPLIED}=1 "
    role, _, index = step.name.partition("-")
    if role != "learner":
        gpus = f", GPU {','.join(map(str, step.gpus))}" if step.gpus else ""
        return (f"# {step.name} on node {step.nodes[0]}{gpus}\n"
                f'keep {step.name} {srun}"${{ASYNCRL[@]}}" {role} "$CONFIG" --index {index} "${{SETS[@]}}" &')
    run = '"${ASYNCRL[@]}" learner "$CONFIG" "${SETS[@]}"'
    if cfg.learner.nnodes == 1:
        return f"# learner on node 0\n{srun}{run} &\nLEARNER=$!"
    return (f"# learner: one task per learner node (nodes 0..{n - 1}); the node rank is the task's rank\n"
            f"# (tasks follow allocation order, so rank 0 runs on ${{NODES[0]}}, the host every address names)\n"
            f"{srun}bash -c 'exec \"$@\" --node-rank \"$SLURM_PROCID\"' learner {run} &\nLEARNER=$!")


def _check_ports(cfg: RunConfig, steps: list[Step]) -> None:
    """Every port bound on one node must be distinct (learner node 0 and reward workers sharing a node)."""
    by_node: dict[int, dict[str, int]] = {0: learner_ports(cfg)}
    for step in steps:
        if step.name.startswith("reward-"):
            j = int(step.name.split("-")[1])
            by_node.setdefault(step.nodes[0], {})[f"transport.rewards[{j}]"] = port(cfg.transport.rewards[j])
    for node, bound in by_node.items():
        check_ports(bound, f"allocation node {node}")
