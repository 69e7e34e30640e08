"""The on-disk prompt dataset schema (veRL's), and the one parquet writer for it.

One parquet file per split (``train.parquet``, ``test.parquet``), one row per prompt:

=============  ===========================================  ===================================
column         type                                         meaning
=============  ===========================================  ===================================
data_source    string                                       picks the reward function
prompt         list<struct<role: string, content: string>>  chat messages (or a plain string)
ability        string                                       free-form tag, e.g. "math"
reward_model   struct<style: string, ground_truth: string>  reference answer for the reward
extra_info     struct<split: string, index: int64, ...>     anything else; more keys allowed
=============  ===========================================  ===================================

This is exactly what veRL's ``examples/data_preprocess/gsm8k.py`` writes, so its files
load unchanged. Only ``data_source``, ``prompt`` and ``reward_model.ground_truth`` are
required when reading (see :mod:`asyncrl.data.dataset`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

REQUIRED_COLUMNS = ("data_source", "prompt", "reward_model")

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
REWARD_MODEL_TYPE = pa.struct([("style", pa.string()), ("ground_truth", pa.string())])


class DataError(ValueError):
    """A dataset problem; the message names the file and, where it applies, the column or row."""


def require_model_dir(path: Path, key: str) -> None:
    """A DataError naming the config ``key`` unless ``path`` is an HF model directory."""
    if not (Path(path) / "config.json").is_file():
        from asyncrl.data.hints import model_hint

        raise DataError(f"{key}: {path} is not an HF model directory (no config.json); {model_hint(path)}")


def make_row(
    *,
    data_source: str,
    messages: list[dict[str, str]],
    ability: str,
    ground_truth: str,
    split: str,
    index: int,
    style: str = "rule",
    **extra: Any,
) -> dict[str, Any]:
    """One dataset row in the schema above; ``extra`` goes into ``extra_info``."""
    return {
        "data_source": data_source,
        "prompt": [{"role": m["role"], "content": m["content"]} for m in messages],
        "ability": ability,
        "reward_model": {"style": style, "ground_truth": str(ground_truth)},
        "extra_info": {"split": split, "index": int(index), **extra},
    }


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows made by :func:`make_row` to one parquet file; returns ``path``."""
    if not rows:
        raise DataError(f"refusing to write an empty dataset to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "data_source": pa.array([r["data_source"] for r in rows], pa.string()),
            "prompt": pa.array([r["prompt"] for r in rows], pa.list_(MESSAGE_TYPE)),
            "ability": pa.array([r["ability"] for r in rows], pa.string()),
            "reward_model": pa.array([r["reward_model"] for r in rows], REWARD_MODEL_TYPE),
            # Types of the free-form keys are inferred; split/index are always first.
            "extra_info": pa.array([r["extra_info"] for r in rows]),
        }
    )
    pq.write_table(table, path)
    return path
