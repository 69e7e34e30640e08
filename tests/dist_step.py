"""Run under torchrun by tests/test_multirank.py: one Trainer.step on fixed groups, then
rank 0 writes the stats and the full updated weights.

    torchrun --nproc-per-node K tests/dist_step.py MODEL_DIR OUT_DIR ALGO_JSON

ALGO_JSON holds [algorithm] keys plus optional "learner" (a dict of [learner] keys) and
"groups" (keyword arguments of tests.test_step._groups).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learner.fsdp.model import full_state_dict  # noqa: E402
from tests.test_step import _groups, _trainer  # noqa: E402


def main() -> None:
    model_dir, out, algo = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
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
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
