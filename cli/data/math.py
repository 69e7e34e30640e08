"""Convert MATH / MATH-500 style rows (``problem``, ``solution`` with ``\\boxed{}``) to veRL's schema.

The output matches veRL's ``examples/data_preprocess/math_dataset.py``: data_source
``DigitalLearningGmbH/MATH-lighteval`` (or as given), the problem followed by veRL's
instruction, ``ability`` "math", and ground truth = the ``answer`` column when a row has
one (MATH-500), else the last ``\\boxed{}`` answer of ``solution``. ``extra_info`` holds
split and index, plus ``level``, ``type`` / ``subject`` and ``unique_id`` when present
(as strings). Every data_source veRL uses for MATH selects the ``math`` reward.

Sources are read by :func:`cli.data.custom.load_splits` (file, train/test directory,
or hub id).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asyncrl.data.format import DataError, make_row
from cli.data.custom import load_splits, require_column, scalar_text
from cli.data.filter import LengthFilter, SplitResult, write_splits
from reward.math_reward import last_boxed_answer

DATA_SOURCE = "DigitalLearningGmbH/MATH-lighteval"
INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
EXTRA_COLUMNS = ("level", "type", "subject", "unique_id")


def ground_truth(row: dict[str, Any], where: str) -> str:
    """The row's ``answer`` if present and non-empty, else the last boxed answer of ``solution``."""
    answer = row.get("answer")
    if answer is not None and str(answer).strip():
        return scalar_text(answer, f"{where}, column 'answer'")
    solution = row.get("solution")
    if solution is None:
        raise DataError(f"{where}: needs a column 'answer' or 'solution' (columns: {', '.join(map(str, row))})")
    if not isinstance(solution, str):
        raise DataError(f"{where}, column 'solution': expected a string, got {solution!r:.80}")
    boxed = last_boxed_answer(solution)
    if boxed is None:
        raise DataError(f"{where}, column 'solution': no \\boxed{{...}} answer in {solution[-80:]!r}")
    return boxed


def _convert(rows: list[dict[str, Any]], split: str, origin: str, data_source: str) -> list[dict[str, Any]]:
    require_column(rows, "problem", origin)
    if "answer" not in rows[0] and "solution" not in rows[0]:
        raise DataError(f"{origin}: needs a column 'solution' or 'answer'; columns: {', '.join(map(str, rows[0]))}")
    out = []
    for index, row in enumerate(rows):
        where = f"{origin}: {split} row {index}"
        problem = row.get("problem")
        if not isinstance(problem, str) or not problem.strip():
            raise DataError(f"{where}, column 'problem': expected a non-empty string, got {problem!r:.80}")
        extra = {k: str(row[k]) for k in EXTRA_COLUMNS if row.get(k) is not None}
        out.append(
            make_row(
                data_source=data_source,
                messages=[{"role": "user", "content": problem + " " + INSTRUCTION}],
                ability="math",
                ground_truth=ground_truth(row, where),
                split=split,
                index=index,
                **extra,
            )
        )
    return out


def convert_math(
    source: str | Path,
    out: Path,
    *,
    data_source: str = DATA_SOURCE,
    limit: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.1,
    length_filter: LengthFilter | None = None,
) -> list[SplitResult]:
    """Write ``out/train.parquet`` and ``out/test.parquet`` from a MATH-style source."""
    if not data_source:
        raise DataError("--data-source must not be empty")
    splits, origin = load_splits(source, seed, test_fraction)
    converted = {}
    for split, rows in splits.items():
        if not rows:
            raise DataError(f"{origin}: the {split} split is empty")
        converted[split] = _convert(rows, split, origin, data_source)
    return write_splits(converted, out, origin, limit=limit, length_filter=length_filter)
