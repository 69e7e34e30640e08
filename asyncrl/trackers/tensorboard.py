"""TensorBoard backend (``[logging] tensorboard = true``): one scalar per metric and step, the config
as text and as hparams, in ``<run dir>/tensorboard`` by default::

    tracker = TensorBoardTracker(Path("runs/demo/tensorboard"), {"learner": {"lr": 1e-5}}, resume_step=None)
    tracker.log({"reward/mean": 0.5}, step=1)
    tracker.close()
    # then: tensorboard --logdir runs/demo/tensorboard   (or --logdir runs to compare runs)

Each start writes a new event file in the same directory, beginning with a purge marker: a resumed
run (checkpoint at step T) hides the steps after T that the crashed process had logged, and a fresh
start in a used directory hides the earlier run's curves, as TensorBoard's ``purge_step`` does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asyncrl.trackers import flatten, scalars

FLUSH_SECS = 10  # how stale a live TensorBoard view may be (SummaryWriter's default is 120 s)


def _hparam(value: Any) -> bool | int | float | str:
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value)


class TensorBoardTracker:
    def __init__(self, log_dir: Path, config: Mapping[str, Any] | None, *, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        start = 0 if resume_step is None else resume_step + 1
        self.writer: Any = SummaryWriter(str(self.log_dir), purge_step=start, flush_secs=FLUSH_SECS)
        if config:
            self._log_config(dict(config), step=max(0, start - 1))

    def _log_config(self, config: dict[str, Any], step: int) -> None:
        from tensorboard.plugins.hparams import summary_v2

        # Markdown: a code block keeps the JSON's layout in the Text tab.
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", global_step=step)
        # The session-start summary alone: the HParams tab then compares runs by these values and
        # finds their metrics among the scalars (no experiment summary to keep in step).
        hparams = {k: _hparam(v) for k, v in flatten(config, ".").items()}
        self.writer.file_writer.add_summary(summary_v2.hparams_pb(hparams), global_step=step)

    def log(self, record: Mapping[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()
