"""What both deploy targets share: the error type, the template renderer, the per-process
resource needs and the checks that refuse options or keys a rendered deployment cannot honour."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from asyncrl.config import ConfigError, RunConfig, parse_address
from asyncrl.config_moved import ALIASES

# Keys a deployment fills in itself (from the allocation or the cluster DNS); a `--set` of one is refused.
FILLED_KEYS = ("transport.dispatch", "transport.trajectories", "transport.rewards", "weight_sync.address",
               "transport.bind_host", "transport.curve_dir", "learner.rdzv_endpoint")
DEFAULT_RDZV_PORT = 29500
_PLACEHOLDER = re.compile(r"\{\{ *([a-z_]+) *\}\}")


class DeployError(ConfigError):
    """An option or key a deployment cannot honour; the message names it (exit 2)."""


def render(template: str, values: dict[str, object]) -> str:
    """Fill ``{{ name }}`` placeholders of ``templates/<template>``; every name must have a value."""
    text = resources.files("cli.deploy").joinpath("templates", template).read_text()
    missing = sorted({m for m in _PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise KeyError(f"template {template}: no value for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


@dataclass(frozen=True)
class Needs:
    """GPUs each process of a run needs (0 on CPU hosts), and whether the run is on GPUs at all."""

    gpu: bool
    learner_per_node: int  # learner.world_size / learner.nnodes ranks, one device each
    generator: int  # rollout.tensor_parallel_size
    reward: int  # 1 for a reward model, 0 for function rewards


def needs(cfg: RunConfig, gpu: bool) -> Needs:
    per_node = cfg.learner.world_size // cfg.learner.nnodes
    if not gpu:
        return Needs(False, per_node, 0, 0)
    return Needs(True, per_node, cfg.rollout.tensor_parallel_size, 1 if cfg.reward.type != "function" else 0)


def check_config(cfg: RunConfig, sets: list[str], target: str) -> None:
    """Refuse what a rendered deployment cannot honour, before anything is written."""
    for override in sets:
        key = override.partition("=")[0].strip()
        key = ALIASES.get(key, key)
        if key in FILLED_KEYS:
            raise DeployError(f"--set {key}: does not apply to `asyncrl deploy {target}`, which fills it in "
                              f"(ports come from the config, hosts from the {_source(target)})")
    p = cfg.placement
    for key, value in (("placement.learner", p.learner), ("placement.generators", p.generators),
                       ("placement.reward", p.reward)):
        if value is not None:
            raise DeployError(f"{key}: per-host device lists do not apply to `asyncrl deploy {target}` (each "
                              f"process gets its own devices from the {_source(target)}); remove it")


def _source(target: str) -> str:
    return "Slurm allocation" if target == "slurm" else "pods' headless-service DNS names"


def port(addr: str) -> int:
    return parse_address(addr)[1]


def rdzv_port(cfg: RunConfig) -> int:
    return port(cfg.learner.rdzv_endpoint) if cfg.learner.rdzv_endpoint else DEFAULT_RDZV_PORT


def learner_ports(cfg: RunConfig) -> dict[str, int]:
    """Ports learner node 0 binds (rank 0's sockets, the weight-sync store, the rendezvous)."""
    t = cfg.transport
    out = {"transport.dispatch": port(t.dispatch), "transport.trajectories": port(t.trajectories),
           "weight_sync.address": port(cfg.weight_sync.address)}
    if cfg.learner.nnodes > 1:
        out["learner.rdzv_endpoint"] = rdzv_port(cfg)
    return out


def check_ports(bound: dict[str, int], where: str) -> None:
    """Two keys binding one port on one host cannot both work."""
    seen: dict[int, str] = {}
    for key, number in bound.items():
        if number in seen:
            raise DeployError(f"{key}: port {number} is also {seen[number]}'s, and both bind on {where}; "
                              f"give each its own port")
        seen[number] = key
