"""Checkpoints a run can resume from exactly, kept K at a time.

``<run>/checkpoints/step_000040/`` holds:

* ``dcp/`` - model and optimizer state of every trained module, sharded as in training
  (torch.distributed.checkpoint: each rank writes its own shards, and a checkpoint saved
  with K ranks loads with any number of ranks);
* ``hf/`` - a full HF export that transformers and vLLM load;
* ``rng/rank{r}.pt`` - each rank's torch and Python RNG states;
* ``state.json`` - what rank 0 knows: step, policy version, data position (the
  dispatcher's), counters, LR scheduler, KL controller;
* ``manifest.json`` - written last: every file with its size. A directory without a
  valid manifest (a crash mid-save, a truncated copy) is never resumed from; the newest
  valid one is, with a warning naming the broken one.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from asyncrl.errors import CheckpointError

log = logging.getLogger("learner.checkpoint")

Trainable = tuple[torch.nn.Module, torch.optim.Optimizer]


def _state_dicts(modules: dict[str, Trainable]) -> dict[str, dict[str, Any]]:
    """``{name: {"model": ..., "optim": ...}}``: what DCP saves, and the templates it loads into."""
    sd = {}
    for name, (module, optim) in modules.items():
        msd, osd = get_state_dict(module, optim)
        sd[name] = {"model": msd, "optim": osd}
    return sd


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def verify(path: Path) -> str | None:
    """None if ``path`` is a complete checkpoint, else what is wrong with it."""
    manifest = path / "manifest.json"
    if not manifest.is_file():
        return "no manifest.json (the save did not finish)"
    try:
        want = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"unreadable manifest.json ({e})"
    have = _files(path)
    for name, size in want.items():
        if name not in have:
            return f"missing file {name}"
        if have[name] != size:
            return f"{name} is {have[name]} bytes, expected {size} (truncated or corrupt)"
    return None


@dataclass
class Checkpointer:
    root: Path
    keep: int

    def save(self, step: int, modules: dict[str, Trainable], state: dict[str, Any],
             export: Any | None = None) -> Path:
        """Every rank calls this. ``export(path)`` writes the HF export (a collective too)."""
        path = self.root / f"step_{step:06d}"
        rank = dist.get_rank()
        if rank == 0 and path.exists():
            shutil.rmtree(path)  # a stale partial save of the same step
        dist.barrier()
        sd = _state_dicts(modules)
        dcp.save(sd, checkpoint_id=str(path / "dcp"))
        (path / "rng").mkdir(parents=True, exist_ok=True)
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, path / "rng" / f"rank{rank}.pt")
        if export is not None:
            export(path / "hf")
        dist.barrier()
        if rank == 0:
            (path / "state.json").write_text(json.dumps(state, indent=1))
            (path / "manifest.json").write_text(json.dumps({"step": step, "files": _files(path)}, indent=1))
            self._rotate()
        dist.barrier()
        return path

    def _rotate(self) -> None:
        done = [p for p in sorted(self.root.glob("step_*")) if (p / "manifest.json").is_file()]
        for old in done[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> Path | None:
        """The newest complete checkpoint; broken newer ones are reported and skipped."""
        for path in sorted(self.root.glob("step_*"), reverse=True):
            problem = verify(path)
            if problem is None:
                return path
            log.warning("checkpoint %s is unusable: %s; trying the previous one", path, problem)
        return None

    def load(self, path: Path, modules: dict[str, Trainable]) -> dict[str, Any]:
        """Restore modules, optimizers and this rank's RNG; return ``state.json``."""
        problem = verify(path)
        if problem is not None:
            raise CheckpointError(f"checkpoint {path} is unusable: {problem}")
        sd = _state_dicts(modules)
        dcp.load(sd, checkpoint_id=str(path / "dcp"))
        for name, (module, optim) in modules.items():
            set_state_dict(module, optim, model_state_dict=sd[name]["model"], optim_state_dict=sd[name]["optim"])
        rng_file = path / "rng" / f"rank{dist.get_rank()}.pt"
        if rng_file.is_file():  # absent when resuming with more ranks than saved
            rng = torch.load(rng_file, weights_only=True)
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
        return json.loads((path / "state.json").read_text())
