"""Prompt datasets in veRL's parquet schema: writers (arith, gsm8k) and a validating loader."""
