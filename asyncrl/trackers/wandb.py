"""wandb backend (``[logging] wandb = true``): the record's scalars per step, the config as the
run's config, files under the run dir (offline unless ``wandb_mode`` says otherwise)::

    tracker = WandbTracker(Path("runs/demo"), "asyncrl", "offline", {"learner": {"lr": 1e-5}})
    tracker.log({"reward/mean": 0.5}, step=1)
    tracker.close()
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from asyncrl.trackers import ending_status, scalars


class WandbTracker:
    def __init__(self, run_dir: Path, project: str, mode: Literal["offline", "online", "disabled"],
                 config: Mapping[str, Any] | None) -> None:
        import wandb  # lazy: a heavy import, paid only by runs that log to wandb

        self.run: Any = wandb.init(project=project, mode=mode, dir=str(run_dir), config=dict(config or {}))

    def log(self, record: Mapping[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(scalars(record), step=step)

    def close(self) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=0 if ending_status() == "FINISHED" else 1)
