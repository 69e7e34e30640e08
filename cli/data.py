"""``asyncrl data``: write prompt datasets in veRL's parquet schema."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Prepare datasets (veRL parquet schema).", no_args_is_help=True, add_completion=False)


def _fail(command: str, exc: Exception) -> None:
    typer.echo(f"asyncrl data {command}: {exc}", err=True)
    raise typer.Exit(2)


def _report(paths: tuple[Path, Path]) -> None:
    import pyarrow.parquet as pq

    for path in paths:
        typer.echo(f"wrote {path} ({pq.read_metadata(path).num_rows} rows)")


@app.command()
def arith(
    out: Path = typer.Option(..., "--out", help="Directory for train.parquet and test.parquet."),
    n_train: int = typer.Option(2000, help="Training prompts."),
    n_test: int = typer.Option(200, help="Test prompts (disjoint from training where the space allows)."),
    min_value: int = typer.Option(0, help="Smallest operand."),
    max_value: int = typer.Option(20, help="Largest operand."),
    ops: str = typer.Option("+", help="Operations to draw from, e.g. '+-*'."),
    seed: int = typer.Option(0, help="Seed of the problem draw."),
) -> None:
    """Synthetic arithmetic ("What is 7 + 5?"), answered after '####'."""
    from asyncrl.data.arith import write_arith

    try:
        paths = write_arith(
            out, n_train=n_train, n_test=n_test, min_value=min_value, max_value=max_value, ops=ops, seed=seed
        )
    except (ValueError, FileNotFoundError) as exc:
        _fail("arith", exc)
    _report(paths)


@app.command()
def gsm8k(
    source: str = typer.Option(..., "--source", help="Local parquet/jsonl file, directory, or hub id."),
    out: Path = typer.Option(..., "--out", help="Directory for train.parquet and test.parquet."),
    limit: Optional[int] = typer.Option(None, help="Keep at most this many rows per split."),
    seed: int = typer.Option(0, help="Shuffle seed when one file is split into train/test."),
    test_fraction: float = typer.Option(0.1, help="Test share when one file is split."),
) -> None:
    """Convert GSM8K (question/answer with '#### N') to veRL's schema, as veRL's preprocessor does."""
    from asyncrl.data.gsm8k import convert_gsm8k

    try:
        paths = convert_gsm8k(source, out, limit=limit, seed=seed, test_fraction=test_fraction)
    except (ValueError, FileNotFoundError) as exc:
        _fail("gsm8k", exc)
    _report(paths)
