"""Which devices or CPU cores each process of a run gets: one plan, computed in one place.

``[placement]`` in the config says it (or says nothing and the plan is automatic). On a GPU
host the learner gets ``world_size / nnodes`` GPUs, each generator ``rollout.tensor_parallel_size``
GPUs and each model-scoring reward worker one, as ``CUDA_VISIBLE_DEVICES`` of its process; a plan
that needs more GPUs than are visible, or lets two roles share one without
``placement.allow_overlap``, is refused with :class:`PlacementError` (exit 2) before anything
starts. On a CPU host the same entries are core sets: a generator's TP workers each get one
(``VLLM_CPU_OMP_THREADS_BIND="0|1"``), sharing cores between roles is allowed (on 2 cores it is
the only way)::

    plan = make_plan(cfg)              # raises PlacementError naming the key
    plan.env["rollout-0"]              # {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    apply_placement(cfg, "rollout", 0) # at a process's start: sets its env (and CPU affinity)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from asyncrl.config import RunConfig

APPLIED = "ASYNCRL_PLACEMENT_APPLIED"  # set by `asyncrl up`: the child's env already holds its placement
AFFINITY = "ASYNCRL_CPU_AFFINITY"  # CPU cores a learner or reward worker pins itself to
THREADS = "ASYNCRL_LEARNER_THREADS"  # torch threads per learner rank


class PlacementError(ValueError):
    """A placement that cannot work on this host; the message names the key."""


@dataclass
class Plan:
    """Devices per process name (``learner``, ``rollout-I``, ``reward-J``) and the env that applies them."""

    kind: str  # "cuda" or "cpu"
    visible: list[str]  # GPU ids or CPU ids this host offers
    devices: dict[str, list[list[str]]] = field(default_factory=dict)  # name -> per-worker id lists
    env: dict[str, dict[str, str]] = field(default_factory=dict)  # incl. ASYNCRL_CPU_AFFINITY on CPU


def parse_ids(spec: str, key: str) -> list[list[str]]:
    """``"0,1"`` -> [["0", "1"]]; ``"0-1|2-3"`` -> [["0", "1"], ["2", "3"]] (one list per ``|`` part)."""
    parts = []
    for part in spec.split("|"):
        ids: list[str] = []
        for item in (x.strip() for x in part.split(",")):
            lo, dash, hi = item.partition("-")
            if not lo.isdigit() or (dash and not hi.isdigit()) or (dash and int(hi) < int(lo)):
                raise PlacementError(f"{key}: {spec!r} is not a list of ids such as '0,1', '2-3' or '0|1'")
            ids += [str(i) for i in range(int(lo), int(hi) + 1)] if dash else [lo]
        parts.append(ids)
    return parts


def visible_gpus() -> list[str]:
    """GPU ids a process started here can use (CUDA_VISIBLE_DEVICES entries, else all)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [x.strip() for x in env.split(",") if x.strip() and x.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA runtime: no GPUs
        return []


def visible_cpus() -> list[str]:
    return [str(c) for c in sorted(os.sched_getaffinity(0))]


def make_plan(cfg: RunConfig, gpus: list[str] | None = None, cpus: list[str] | None = None,
              only: str | None = None) -> Plan:
    """The placement of every process of ``cfg`` on one host (``asyncrl up``), or with ``only`` of that
    one process as if it were alone on its host (a process started by hand, e.g. one per host of a
    multi-host run: an automatic plan then takes the first devices it sees)."""
    p = cfg.placement
    gpus = visible_gpus() if gpus is None else gpus
    kind = p.device if p.device != "auto" else ("cuda" if gpus else "cpu")
    if kind == "cuda":
        if not gpus:
            raise PlacementError("placement.device = 'cuda' but no GPU is visible (CUDA_VISIBLE_DEVICES, driver)")
        return _gpu_plan(cfg, gpus, only)
    return _cpu_plan(cfg, visible_cpus() if cpus is None else cpus, only)


def _wanted(cfg: RunConfig, only: str | None = None) -> list[tuple[str, str, int, str | None]]:
    """(process name, config key, devices it needs, explicit spec or None) for every process."""
    p, tp = cfg.placement, cfg.rollout.tensor_parallel_size
    out = [("learner", "placement.learner", cfg.learner.world_size // cfg.learner.nnodes, p.learner)]
    out += [(f"rollout-{i}", f"placement.generators[{i}]", tp, p.generators[i] if p.generators else None)
            for i in range(cfg.rollout.num_generators)]
    scoring = 1 if cfg.reward.type != "function" else 0
    out += [(f"reward-{j}", f"placement.reward[{j}]", scoring, p.reward[j] if p.reward else None)
            for j in range(cfg.reward.num_workers)]
    return [w for w in out if only is None or w[0] == only]


def _gpu_plan(cfg: RunConfig, gpus: list[str], only: str | None) -> Plan:
    plan = Plan("cuda", gpus)
    owner: dict[str, str] = {}
    next_free = 0
    wanted = _wanted(cfg, only)
    needed = sum(n for _, _, n, spec in wanted if spec is None)
    explicit = any(spec is not None for *_, spec in wanted)
    if not explicit and needed > len(gpus):
        detail = ", ".join(f"{name} {n}" for name, _, n, _ in wanted if n)
        raise PlacementError(f"placement: this run needs {needed} GPU(s) ({detail}; learner.world_size / "
                             f"learner.nnodes, rollout.num_generators x rollout.tensor_parallel_size) but "
                             f"{len(gpus)} are visible")
    for name, key, n, spec in wanted:
        if spec is None:
            if n == 0:
                ids: list[str] = []
            else:
                free = [i for i in range(len(gpus)) if str(i) not in owner][:n] if explicit else \
                    list(range(next_free, next_free + n))
                if len(free) < n:
                    raise PlacementError(f"{key}: {name} needs {n} GPU(s); none left of the {len(gpus)} visible")
                ids = [str(i) for i in free]
                next_free += n
        else:
            ids = [i for part in parse_ids(spec, key) for i in part]
            if len(ids) != n and n:
                raise PlacementError(f"{key}: {spec!r} names {len(ids)} GPU(s); {name} needs {n}")
            bad = [i for i in ids if int(i) >= len(gpus)]
            if bad:
                raise PlacementError(f"{key}: GPU {bad[0]} is not visible (this host shows {len(gpus)}: "
                                     f"{','.join(gpus)})")
        for i in ids:
            if i in owner and not cfg.placement.allow_overlap:
                raise PlacementError(f"{key}: GPU {i} is also given to {owner[i]}; declare "
                                     f"placement.allow_overlap = true to share it")
            owner.setdefault(i, name)
        plan.devices[name] = [ids]
        plan.env[name] = {"CUDA_VISIBLE_DEVICES": ",".join(gpus[int(i)] for i in ids)}
    return plan


def _cpu_plan(cfg: RunConfig, cpus: list[str], only: str | None) -> Plan:
    plan = Plan("cpu", cpus)
    p, tp = cfg.placement, cfg.rollout.tensor_parallel_size
    generators = 1 if only else cfg.rollout.num_generators  # alone on its host: all cores are its own
    for name, key, _, spec in _wanted(cfg, only):
        env: dict[str, str] = {}
        parts = parse_ids(spec, key) if spec is not None else None
        if parts is not None:
            bad = [c for part in parts for c in part if c not in cpus]
            if bad:
                raise PlacementError(f"{key}: CPU {bad[0]} is not available to this process "
                                     f"(allowed: {_compact(cpus)})")
        if name.startswith("rollout-"):
            index = 0 if only else int(name.split("-")[1])
            parts = _tp_core_sets(parts, tp, cpus, index, generators, key)
            if parts is not None:  # None: TP 1 and nothing said, vLLM binds automatically (as before)
                env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(_compact(part) for part in parts)
            if p.generator_threads:
                env["OMP_NUM_THREADS"] = str(p.generator_threads)
        elif parts is not None:
            env[AFFINITY] = _compact([c for part in parts for c in part])
        if name == "learner" and p.learner_threads:
            env[THREADS] = str(p.learner_threads)
        plan.devices[name] = parts or []
        plan.env[name] = env
    return plan


def _tp_core_sets(parts: list[list[str]] | None, tp: int, cpus: list[str], index: int, generators: int,
                  key: str) -> list[list[str]] | None:
    """One core set per TP worker of generator ``index``."""
    if parts is None:
        if tp == 1:
            return None
        pool = cpus
        if len(cpus) >= generators * tp:  # enough cores: each generator its own slice
            per = len(cpus) // generators
            pool = cpus[index * per:(index + 1) * per]
        if len(pool) < tp:
            raise PlacementError(f"rollout.tensor_parallel_size={tp} needs at least {tp} CPU cores (one per TP "
                                 f"worker); this process may use {len(cpus)} ({_compact(cpus)})")
        return [list(c) for c in _split(pool, tp)]
    if len(parts) == 1 and tp > 1:
        if len(parts[0]) < tp:
            raise PlacementError(f"{key}: {len(parts[0])} core(s) for {tp} TP workers; give at least one each")
        return [list(c) for c in _split(parts[0], tp)]
    if len(parts) != tp:
        raise PlacementError(f"{key}: {len(parts)} core set(s) separated by '|' but "
                             f"rollout.tensor_parallel_size={tp}")
    return parts


def _split(items: list[str], k: int) -> list[list[str]]:
    per, extra = divmod(len(items), k)
    out, start = [], 0
    for i in range(k):
        end = start + per + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def _compact(ids: list[str]) -> str:
    """["0", "1", "2", "5"] -> "0-2,5" (the form vLLM and taskset read)."""
    nums = sorted(int(i) for i in ids)
    out: list[str] = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ",".join(out)


CPU_KEYS = ("VLLM_CPU_OMP_THREADS_BIND", AFFINITY, THREADS)  # set from the plan, never inherited


def child_env(placed: dict[str, str], base: dict[str, str]) -> dict[str, str]:
    """The environment ``asyncrl up`` gives a process: ``base`` without placement keys it may have
    inherited, plus ``placed`` (its part of :class:`Plan` ``.env``), marked as applied."""
    env = {k: v for k, v in base.items() if k not in CPU_KEYS}
    return {**env, **placed, APPLIED: "1"}


def apply_placement(cfg: RunConfig, role: str, index: int = 0) -> None:
    """At a process's start, before torch or vLLM touch a device: set its placement env and affinity.

    Under ``asyncrl up`` (which computed the plan once and passed :func:`child_env`) the env is
    already there; a process started by hand, or a test building an engine in-process, computes its
    own part of the plan each time (:func:`make_plan` with ``only``).
    """
    if os.environ.get(APPLIED) != "1":
        name = role if role == "learner" else f"{role}-{index}"
        env = make_plan(cfg, only=name).env.get(name, {})
        for key in CPU_KEYS:
            os.environ.pop(key, None)
        os.environ.update(env)
    cores = os.environ.get(AFFINITY)
    if cores:
        os.sched_setaffinity(0, [int(c) for part in parse_ids(cores, AFFINITY) for c in part])
    threads = os.environ.get(THREADS)
    if threads and role == "learner":
        import torch

        torch.set_num_threads(int(threads))


def describe(plan: Plan, name: str) -> str:
    """One line: what ``name`` gets (for ``asyncrl up --dry-run`` and logs)."""
    parts = plan.devices.get(name) or []
    what = "GPU" if plan.kind == "cuda" else "CPU"
    if not parts:
        return "no GPU" if plan.kind == "cuda" else "any CPU (automatic)"
    return f"{what} " + " | ".join(_compact(p) for p in parts)
