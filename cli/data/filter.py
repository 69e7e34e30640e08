"""Drop over-long prompts (``--max-prompt-tokens`` with ``--tokenizer``) and write train/test splits.

Prompt length is counted the way the learner counts it (``learner/train.py``): the
tokenizer's chat template with the generation prompt appended; a tokenizer without a
chat template encodes the message contents joined by newlines. :func:`write_splits` is
the shared tail of the ``math`` and ``custom`` converters (filter, then limit, then
write); :func:`filter_parquet` filters a file already written (``arith``, ``gsm8k``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from asyncrl.data.format import DataError, write_rows


@dataclass
class LengthFilter:
    """A loaded tokenizer and the most prompt tokens a row may have."""

    tokenizer: Any
    max_tokens: int
    source: str

    def lengths(self, prompts: list[list[dict[str, str]]]) -> list[int]:
        """The token count of each prompt (a list of ``{role, content}`` messages)."""
        out = []
        for messages in prompts:
            if getattr(self.tokenizer, "chat_template", None):
                ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
                if not isinstance(ids, list):  # transformers may return a BatchEncoding
                    ids = ids["input_ids"]
            else:
                ids = self.tokenizer.encode("\n".join(m["content"] for m in messages), add_special_tokens=True)
            out.append(len(ids))
        return out

    def keep(self, prompts: list[list[dict[str, str]]]) -> list[bool]:
        """Whether each prompt fits in ``max_tokens``."""
        return [n <= self.max_tokens for n in self.lengths(prompts)]


def make_filter(max_prompt_tokens: int | None, tokenizer: str | Path | None) -> LengthFilter | None:
    """A :class:`LengthFilter` from the CLI options, or None when ``--max-prompt-tokens`` is not given."""
    if max_prompt_tokens is None:
        if tokenizer is not None:
            raise DataError("--tokenizer is only used with --max-prompt-tokens; give both or neither")
        return None
    if max_prompt_tokens < 1:
        raise DataError(f"--max-prompt-tokens {max_prompt_tokens} must be >= 1")
    if tokenizer is None:
        raise DataError("--max-prompt-tokens needs --tokenizer DIR (a local Hugging Face tokenizer directory)")
    path = Path(tokenizer).expanduser()
    if not path.is_dir():
        raise DataError(f"--tokenizer {path}: not a directory (a local Hugging Face tokenizer directory)")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # transformers raises OSError, ValueError, ... for unusable folders
        raise DataError(f"--tokenizer {path}: cannot load a tokenizer ({type(exc).__name__}: {exc})") from exc
    return LengthFilter(tok, max_prompt_tokens, str(path))


@dataclass
class SplitResult:
    """One written split: its path, rows written, and prompts dropped for length."""

    split: str
    path: Path
    rows: int
    dropped: int = 0

    def describe(self, length_filter: LengthFilter | None = None) -> str:
        text = f"wrote {self.path} ({self.rows} rows"
        if length_filter is not None:
            text += f"; dropped {self.dropped} prompts over {length_filter.max_tokens} tokens"
        return text + ")"


def write_splits(
    splits: dict[str, list[dict[str, Any]]],
    out: Path,
    origin: str,
    *,
    limit: int | None = None,
    length_filter: LengthFilter | None = None,
) -> list[SplitResult]:
    """Filter each split's rows (made by :func:`~asyncrl.data.format.make_row`), keep the
    first ``limit``, and write ``out/<split>.parquet``."""
    if limit is not None and limit < 1:
        raise DataError(f"--limit {limit} must be >= 1")
    results = []
    for split, rows in splits.items():
        if not rows:
            raise DataError(f"{origin}: the {split} split is empty")
        dropped = 0
        if length_filter is not None:
            mask = length_filter.keep([row["prompt"] for row in rows])
            dropped = mask.count(False)
            rows = [row for row, ok in zip(rows, mask) if ok]
            if not rows:
                raise DataError(
                    f"{origin}: all {dropped} prompts of the {split} split are longer than "
                    f"--max-prompt-tokens {length_filter.max_tokens} (tokenizer {length_filter.source})"
                )
        rows = rows[:limit] if limit is not None else rows
        path = write_rows(Path(out) / f"{split}.parquet", rows)
        results.append(SplitResult(split, path, len(rows), dropped))
    return results


def filter_parquet(path: Path, length_filter: LengthFilter) -> tuple[int, int]:
    """Drop over-long prompts from a written veRL-schema file in place; returns ``(kept, dropped)``.

    Raises :class:`DataError` (and removes the file) when no prompt fits.
    """
    table = pq.read_table(path)
    prompts = [
        [{"role": "user", "content": p}] if isinstance(p, str) else p for p in table.column("prompt").to_pylist()
    ]
    mask = length_filter.keep(prompts)
    kept = sum(mask)
    if kept == 0:
        Path(path).unlink()
        raise DataError(
            f"{path}: all {len(mask)} prompts are longer than --max-prompt-tokens {length_filter.max_tokens} "
            f"(tokenizer {length_filter.source}); the file was removed"
        )
    if kept < len(mask):
        import pyarrow as pa

        pq.write_table(table.filter(pa.array(mask)), path)
    return kept, len(mask) - kept
