"""Load and validate a prompt parquet file (veRL's schema, see :mod:`asyncrl.data.format`).

Every problem raises :class:`~asyncrl.data.format.DataError` naming the file and the
column (and row, where it applies), before any training starts. Accepted leniencies:
``prompt`` may be a plain string (it becomes one user message), ``ground_truth`` may be
any scalar (it becomes a string; integral floats lose their ``.0``), and ``extra_info``
may be missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from asyncrl.data.format import REQUIRED_COLUMNS, DataError


@dataclass
class PromptRow:
    """One prompt: ``index`` is the row number, ``prompt_id`` a stable id for the run."""

    index: int
    prompt_id: int
    messages: list[dict[str, str]]
    data_source: str
    ground_truth: str
    extra_info: dict[str, Any] = field(default_factory=dict)


def to_messages(value: Any, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: expected a non-empty list of {{role, content}} messages or a string, got {value!r}")
    messages = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise DataError(f"{where}: message {i} must have string 'role' and 'content', got {msg!r}")
        messages.append({"role": msg["role"], "content": msg["content"]})
    return messages


def _ground_truth(value: Any, where: str) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (str, int, float, bool)):
        return str(value)
    raise DataError(f"{where}: expected a scalar ground truth, got {value!r}")


def read_parquet(path: Path, required: tuple[str, ...]) -> pa.Table:
    """A non-empty parquet table with the ``required`` columns, else a DataError naming them."""
    path = Path(path)
    if not path.is_file():
        from asyncrl.data.hints import data_hint

        raise DataError(f"dataset file not found: {path}; {data_hint(path)}")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for non-parquet input
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    for column in required:
        if column not in table.column_names:
            raise DataError(f"{path}: missing required column {column!r} (has {table.column_names})")
    if table.num_rows == 0:
        raise DataError(f"{path}: the dataset has no rows")
    return table


def _read(path: Path) -> pa.Table:
    table = read_parquet(path, REQUIRED_COLUMNS)
    reward_type = table.schema.field("reward_model").type
    if not pa.types.is_struct(reward_type) or reward_type.get_field_index("ground_truth") < 0:
        raise DataError(f"{path}: column 'reward_model' must be a struct with field 'ground_truth', got {reward_type}")
    return table


def load_prompts(path: Path) -> list[PromptRow]:
    """Read and validate ``path``; returns one :class:`PromptRow` per parquet row."""
    table = _read(path)
    columns = {name: table.column(name).to_pylist() for name in REQUIRED_COLUMNS}
    extras = table.column("extra_info").to_pylist() if "extra_info" in table.column_names else [None] * table.num_rows
    rows = []
    for i in range(table.num_rows):
        source = columns["data_source"][i]
        if not isinstance(source, str) or not source:
            raise DataError(f"{path}: row {i}, column 'data_source': expected a non-empty string, got {source!r}")
        reward = columns["reward_model"][i] or {}
        if reward.get("ground_truth") is None:
            raise DataError(f"{path}: row {i}, column 'reward_model.ground_truth' is null")
        extra = extras[i]
        if extra is None:
            extra = {}
        elif not isinstance(extra, dict):
            raise DataError(f"{path}: row {i}, column 'extra_info': expected a struct, got {extra!r}")
        messages = to_messages(columns["prompt"][i], f"{path}: row {i}, column 'prompt'")
        truth = _ground_truth(reward["ground_truth"], f"{path}: row {i}, column 'reward_model.ground_truth'")
        rows.append(PromptRow(i, i, messages, source, truth, extra))
    ids = [x for r in rows if isinstance(x := r.extra_info.get("index"), int) and not isinstance(x, bool)]
    if len(ids) == len(rows) and len(set(ids)) == len(ids):
        for row, prompt_id in zip(rows, ids):
            row.prompt_id = prompt_id
    return rows
