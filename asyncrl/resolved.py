"""Each process's resolved config, written by ``asyncrl up`` for inspection.

``<run dir>/resolved/<name>.json`` (``learner``, ``rollout-<i>``, ``reward-<j>``) holds the
sections that process reads, every default filled in and the run's ``--set`` overrides applied;
``[algorithm]`` lists only the keys in effect for its estimator and loss
(:meth:`AlgorithmSection.applicable`). The processes themselves still start from the TOML (so
workers started by hand on other hosts work the same); these files show what they read::

    write_resolved(cfg, cfg.run.dir, ["learner", "rollout-0", "reward-0"])
    json.loads((cfg.run.dir / "resolved" / "learner.json").read_text())["sampling"]["n"]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from asyncrl.config import RunConfig

_SHARED = ("run", "model", "data", "sampling", "weight_sync", "liveness", "transport", "placement", "logging")

# The sections each role reads (the learner also reads the generator fleet's shape: its sync group).
ROLE_SECTIONS: dict[str, tuple[str, ...]] = {
    "learner": _SHARED + ("learner", "algorithm", "rollout", "environment"),
    "rollout": _SHARED + ("rollout", "environment"),
    "reward": ("model", "reward", "environment", "transport", "placement", "logging"),
}
LEARNER_READS_OF_ROLLOUT = ("num_generators", "tensor_parallel_size", "dtype")


def role_of(name: str) -> str:
    """``rollout-1`` -> ``rollout``; ``learner`` -> ``learner``."""
    role = name.split("-", 1)[0]
    if role not in ROLE_SECTIONS:
        raise ValueError(f"unknown process {name!r}: expected learner, rollout-<i> or reward-<j>")
    return role


def resolved_config(cfg: RunConfig, role: str) -> dict[str, Any]:
    """The JSON-able sections ``role`` reads, every default filled in."""
    out: dict[str, Any] = {}
    for section in ROLE_SECTIONS[role]:
        if section == "algorithm":
            out[section] = cfg.algorithm.applicable()
            continue
        values = getattr(cfg, section).model_dump(mode="json")
        if role == "learner" and section == "rollout":
            values = {k: values[k] for k in LEARNER_READS_OF_ROLLOUT}
        out[section] = values
    return out


def write_resolved(cfg: RunConfig, run_dir: Path, names: list[str]) -> Path:
    """Write ``<run_dir>/resolved/<name>.json`` for each process name; return the folder."""
    folder = Path(run_dir) / "resolved"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        text = json.dumps(resolved_config(cfg, role_of(name)), indent=2) + "\n"
        tmp = folder / f".{name}.json.tmp"
        tmp.write_text(text)
        tmp.replace(folder / f"{name}.json")
    return folder
