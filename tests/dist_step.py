"""Run under torchrun by tests/test_multirank.py: for each case, one Trainer.step on fixed groups,
then rank 0 writes the stats and the full updated weights to OUT_DIR/<case>/.

    torchrun --nproc-per-node K tests/dist_step.py MODEL_DIR OUT_DIR CASES_JSON

CASES_JSON maps a case name to [algorithm] keys plus optional "learner" (a dict of [learner] keys)
and "groups" (keyword arguments of tests.test_step._groups). All cases run in one launch: each
builds its own trainer from the same seed, so a case's result does not depend on the others.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learner.fsdp.model import full_state_dict  # noqa: E402
from tests.test_step import _groups, _trainer  # noqa: E402


def run_case(model_dir: Path, out: Path, algo: dict[str, Any]) -> None:
    learner, groups = algo.pop("learner", {}), algo.pop("groups", {})
    torch.manual_seed(0)
    trainer = _trainer(model_dir, learner=learner, **algo)
    stats = trainer.step(_groups(**{"n_groups": 3, **groups}), learner_version=1)
    state = full_state_dict(trainer.policy)
    if dist.get_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "stats.json").write_text(json.dumps({k: v for k, v in stats.items() if isinstance(v, float)}))
        torch.save(state, out / "state.pt")
    dist.barrier()


def main() -> None:
    model_dir, out, cases = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    for name, algo in cases.items():
        run_case(model_dir, out / name, algo)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
