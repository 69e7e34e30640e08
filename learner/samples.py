"""Sample dumps: what the model wrote, next to what the learner made of it.

Every ``logging.samples_every`` steps the learner writes the step's trained samples to
``<run dir>/samples/train_step_<N>.parquet``, and every validation's samples to
``val_step_<N>.parquet``; ``asyncrl samples RUN_DIR`` (:mod:`cli.samples`) prints them. One row
per sample, columns :data:`COLUMNS`::

    dumps = SampleDumps(run_dir, every=10, tokenizer=tok)
    dumps.train(step, groups, learner_version, trainer.last_logprob_gap)   # when dumps.due(step)
    dumps.validation(step, {"arith": result_groups}, learner_version)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from asyncrl.transport.items import ScoredGroup

log = logging.getLogger("learner.samples")

COLUMNS = {
    "step": pa.int64(), "split": pa.string(), "val_set": pa.string(), "prompt_id": pa.int64(),
    "group_id": pa.int64(), "sample_index": pa.int32(), "data_source": pa.string(), "prompt": pa.string(),
    "response": pa.string(), "ground_truth": pa.string(), "reward": pa.float32(), "reward_error": pa.string(),
    "finish_reason": pa.string(), "response_tokens": pa.int32(), "policy_version": pa.int64(),
    "policy_version_end": pa.int64(), "learner_version": pa.int64(), "staleness": pa.int64(),
    "logprob_gap": pa.float32(), "generator_index": pa.int32(), "num_turns": pa.int32(),
    "num_tool_calls": pa.int32(),
}


class SampleDumps:
    """Writes the parquet dumps of one run (rank 0 of the learner)."""

    def __init__(self, run_dir: Path, every: int, tokenizer: Any) -> None:
        self.dir, self.every, self.tokenizer = Path(run_dir) / "samples", every, tokenizer

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def train(self, step: int, groups: Sequence[ScoredGroup], learner_version: int,
              logprob_gap: torch.Tensor | None = None) -> Path | None:
        """The trained samples of ``step`` (baseline rows excluded, in the learner's sample order,
        which ``logprob_gap`` [N] follows)."""
        rows = [r for g in groups for r in self._rows(g, step, "train", "", learner_version)]
        if logprob_gap is not None and len(logprob_gap) == len(rows):
            for row, gap in zip(rows, logprob_gap.tolist()):
                row["logprob_gap"] = gap if gap > float("-inf") else None
        return self._write(f"train_step_{step:06d}.parquet", rows)

    def validation(self, step: int, by_set: dict[str, Sequence[ScoredGroup]], learner_version: int) -> Path | None:
        """Every validation sample of ``step``, each set's under its name."""
        if self.every <= 0:
            return None
        rows = [r for name, groups in by_set.items() for g in groups
                for r in self._rows(g, step, "val", name, learner_version)]
        return self._write(f"val_step_{step:06d}.parquet", rows) if rows else None

    def _rows(self, g: ScoredGroup, step: int, split: str, val_set: str, learner_version: int) -> list[dict]:
        b = g.batch
        cols = {k: b.column(k).to_pylist() for k in (
            "sample_index", "data_source", "ground_truth", "response_text", "reward", "reward_error",
            "finish_reason", "policy_version", "policy_version_end", "generator_index", "is_baseline",
            "num_turns", "num_tool_calls")}
        lengths = b.column("response_token_ids").value_lengths().to_pylist()
        prompt = self.tokenizer.decode(b.column("prompt_token_ids")[0].as_py(), skip_special_tokens=False)
        out = []
        for i in range(b.num_rows):
            if cols["is_baseline"][i]:
                continue  # ReMax's greedy reply: not a trained sample
            version = cols["policy_version"][i]
            out.append({
                "step": step, "split": split, "val_set": val_set, "prompt_id": g.prompt_id, "group_id": g.group_id,
                "sample_index": cols["sample_index"][i], "data_source": cols["data_source"][i], "prompt": prompt,
                "response": cols["response_text"][i], "ground_truth": cols["ground_truth"][i],
                "reward": cols["reward"][i], "reward_error": cols["reward_error"][i],
                "finish_reason": cols["finish_reason"][i], "response_tokens": lengths[i],
                "policy_version": version, "policy_version_end": cols["policy_version_end"][i],
                "learner_version": learner_version, "staleness": learner_version - version, "logprob_gap": None,
                "generator_index": cols["generator_index"][i], "num_turns": cols["num_turns"][i],
                "num_tool_calls": cols["num_tool_calls"][i]})
        return out

    def _write(self, name: str, rows: list[dict]) -> Path | None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.dir / name
            tmp = path.with_suffix(".tmp")
            pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(COLUMNS)), tmp)
            tmp.replace(path)  # a reader never sees half a file
            return path
        except OSError as e:  # a full disk must not stop training: the dump is a view
            log.warning("sample dump %s not written: %s", name, e)
            return None
