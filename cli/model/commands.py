"""``asyncrl model``: write a tiny random model, or import a GGUF checkpoint as an HF directory."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Create or import model directories.", no_args_is_help=True, add_completion=False)


def _fail(command: str, exc: Exception) -> None:
    typer.echo(f"asyncrl model {command}: {exc}", err=True)
    raise typer.Exit(2)


@app.command()
def tiny(
    out: Path = typer.Option(..., "--out", help="Directory to write the model into."),
    hidden_size: int = typer.Option(64, help="Hidden size; hidden_size/num_heads must be >= 32."),
    num_layers: int = typer.Option(2, help="Decoder layers."),
    num_heads: int = typer.Option(2, help="Attention heads."),
    num_kv_heads: int = typer.Option(1, help="Key/value heads (GQA)."),
    intermediate_size: int = typer.Option(128, help="MLP width."),
    seed: int = typer.Option(0, help="Seed of the random init."),
) -> None:
    """Write a tiny random Llama (character tokenizer, ChatML template) for tests."""
    from cli.model.tiny import write_tiny_model

    try:
        path = write_tiny_model(
            out,
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            intermediate_size=intermediate_size,
            seed=seed,
        )
    except (ValueError, FileNotFoundError) as exc:
        _fail("tiny", exc)
    typer.echo(f"wrote tiny model to {path}")


@app.command("import-gguf")
def import_gguf_cmd(
    out: Path = typer.Option(..., "--out", help="Directory to write the HF model into."),
    gguf: Path | None = typer.Option(None, "--gguf", help="GGUF file (default: bundled SmolLM2-135M-Instruct)."),
) -> None:
    """De-quantize a GGUF file into a float32 HF model directory (default: SmolLM2-135M-Instruct)."""
    from cli.model.gguf import import_gguf

    try:
        path = import_gguf(out, gguf)
    except (ValueError, FileNotFoundError) as exc:
        _fail("import-gguf", exc)
    typer.echo(f"wrote model to {path}")
