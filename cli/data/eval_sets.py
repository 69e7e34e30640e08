"""Evaluation sets with ``problem`` and ``answer`` columns: MATH-500 and AIME-style files.

The layouts of their public releases: HuggingFaceH4/MATH-500 (``problem``, ``solution``, ``answer``,
``subject``, ``level``, ``unique_id``) and AIME sets such as AI-MO/aimo-validation-aime (``id``,
``problem``, ``solution``, ``answer``, ``url``). Every row becomes one prompt of ``out/test.parquet``
(they are test sets: no train split), the problem followed by the MATH instruction to box the final
answer, ground truth = ``answer`` as text (AIME's integers included), graded by the ``math`` reward
(last ``\\boxed{}``; data_source ``HuggingFaceH4/MATH-500`` / ``aime`` select it)::

    convert_eval_set("aime", Path("aime.jsonl"), Path("data/aime"))   # -> [SplitResult(test, ...)]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asyncrl.data.format import DataError, make_row
from cli.data.custom import SUFFIXES, read_records, require_column, scalar_text
from cli.data.filter import LengthFilter, SplitResult, write_splits
from cli.data.math import INSTRUCTION

# name -> (default data_source, extra columns kept in extra_info as text)
SETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "math500": ("HuggingFaceH4/MATH-500", ("subject", "level", "unique_id")),
    "aime": ("aime", ("id", "url", "year")),
}


def source_file(source: Path) -> Path:
    """``source`` itself, or the one data file inside a directory (e.g. a hub snapshot's ``test.jsonl``)."""
    source = Path(source).expanduser()
    if not source.is_dir():
        return source  # read_records names it when missing or of the wrong type
    found = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if len(found) != 1:
        what = "none" if not found else ", ".join(map(str, found))
        raise DataError(f"{source}: expected one data file ({'/'.join(SUFFIXES)}) in the directory, found {what}; "
                        f"pass the file itself")
    return found[0]


def convert_rows(rows: list[dict[str, Any]], origin: str, data_source: str, extras: tuple[str, ...]) -> list[dict]:
    """veRL-schema rows from ``problem`` / ``answer`` rows (DataError naming the column and row)."""
    for column in ("problem", "answer"):
        require_column(rows, column, origin)
    out = []
    for i, row in enumerate(rows):
        where = f"{origin}: row {i}"
        problem, answer = row.get("problem"), row.get("answer")
        if not isinstance(problem, str) or not problem.strip():
            raise DataError(f"{where}, column 'problem': expected a non-empty string, got {problem!r:.80}")
        if answer is None or not str(answer).strip():
            raise DataError(f"{where}, column 'answer' is empty")
        extra = {k: str(row[k]) for k in extras if row.get(k) is not None}
        out.append(make_row(data_source=data_source, messages=[{"role": "user", "content": f"{problem} {INSTRUCTION}"}],
                            ability="math", ground_truth=scalar_text(answer, f"{where}, column 'answer'"),
                            split="test", index=i, **extra))
    return out


def convert_eval_set(name: str, source: Path, out: Path, *, data_source: str | None = None, limit: int | None = None,
                     length_filter: LengthFilter | None = None) -> list[SplitResult]:
    """Write ``out/test.parquet`` for set ``name`` (a key of :data:`SETS`) from a local file."""
    default_source, extras = SETS[name]
    if data_source is not None and not data_source:
        raise DataError("--data-source must not be empty")
    path = source_file(source)
    rows = read_records(path)
    converted = convert_rows(rows, str(path), data_source or default_source, extras)
    return write_splits({"test": converted}, out, str(path), limit=limit, length_filter=length_filter)
