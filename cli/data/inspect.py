"""``asyncrl data inspect``: describe any parquet file, and validate veRL-schema prompt files.

:func:`inspect_file` returns a text report (schema, row count, data_source counts, the
first rows with their prompts rendered as ``role: content`` lines and their ground
truths) and, when the file has veRL's required columns, the problem
:func:`asyncrl.data.dataset.load_prompts` finds in it (or None).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from asyncrl.data.format import REQUIRED_COLUMNS, DataError

MAX_CHARS = 600
"""Longer message contents and values are cut to this many characters in the report."""


def _cut(text: str, limit: int = MAX_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


def render_prompt(prompt: Any) -> list[str]:
    """A prompt as ``role: content`` lines (a plain string is one user message)."""
    if isinstance(prompt, str):
        return [f"user: {_cut(prompt)}"]
    if isinstance(prompt, list):
        lines = []
        for msg in prompt:
            if isinstance(msg, dict):
                lines.append(f"{msg.get('role')}: {_cut(str(msg.get('content')))}")
            else:
                lines.append(f"?: {_cut(repr(msg))}")
        return lines or ["(no messages)"]
    return [f"(not a prompt: {_cut(repr(prompt), 200)})"]


def _read(path: Path) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        return pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for non-parquet input
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc


def _row_lines(row: dict[str, Any], number: int) -> list[str]:
    lines = [f"--- row {number} ---"]
    if "data_source" in row:
        lines.append(f"data_source: {row['data_source']}")
    if "prompt" in row:
        lines.append("prompt:")
        lines += ["  " + line.replace("\n", "\n  ") for line in render_prompt(row["prompt"])]
    reward = row.get("reward_model")
    if isinstance(reward, dict) and "ground_truth" in reward:
        lines.append(f"ground_truth: {_cut(repr(reward['ground_truth']), 200)}")
    if "extra_info" in row:
        lines.append(f"extra_info: {_cut(repr(row['extra_info']), 300)}")
    for key, value in row.items():  # any other table: show every column
        if key not in ("data_source", "prompt", "reward_model", "extra_info", "ability"):
            lines.append(f"{key}: {_cut(repr(value), 300)}")
    return lines


def inspect_file(path: Path, rows: int = 3) -> tuple[str, str | None]:
    """``(report, problem)``: the report text, and a veRL-schema problem or None."""
    if rows < 0:
        raise DataError(f"--rows {rows} must be >= 0")
    table = _read(path)
    lines = [f"file: {path}", f"rows: {table.num_rows}", "schema:"]
    lines += ["  " + line for line in table.schema.to_string(show_schema_metadata=False).splitlines()]
    if "data_source" in table.column_names:
        counts = Counter(table.column("data_source").to_pylist())
        lines.append("data_source counts:")
        lines += [f"  {source}: {n}" for source, n in counts.most_common()]
    for i, row in enumerate(table.slice(0, rows).to_pylist()):
        lines += _row_lines(row, i)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    problem = None
    if missing:
        lines.append(f"veRL prompt schema: no (missing columns: {', '.join(missing)}); not usable as [data] train/test")
    else:
        from asyncrl.data.dataset import load_prompts

        try:
            prompts = load_prompts(Path(path))
        except DataError as exc:
            problem = str(exc)
            lines.append("veRL prompt schema: INVALID (see the error below)")
        else:
            lines.append(f"veRL prompt schema: OK ({len(prompts)} prompts load for training)")
    return "\n".join(lines), problem
