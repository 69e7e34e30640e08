"""Hugging Face hub names where asyncrl expects local paths: models and prepared datasets.

``model.path = "Qwen/Qwen2.5-0.5B-Instruct"`` (likewise ``reward.model_path``,
``algorithm.distill_teacher``) and ``asyncrl data gsm8k`` without ``--source`` work as HF users
expect: :func:`huggingface_hub.snapshot_download` fetches into the hub cache (``HF_HOME`` /
``HF_HUB_CACHE``; ``HF_ENDPOINT`` and ``HF_TOKEN`` apply), and a cached copy is used when the hub
is unreachable or ``HF_HUB_OFFLINE=1``. With neither, the error comes at once and names what to
download and where to point the config. ``asyncrl up`` resolves each name once and hands the
children the local snapshot path, so every process loads the same revision.

    cfg, overrides = resolve_models(cfg, overrides)   # cli/main.py, before anything else reads them
    folder = fetch_dataset("openai/gsm8k", "asyncrl data gsm8k", subdir="main")
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from asyncrl.data.format import DataError

MODEL_KEYS = ("model.path", "reward.model_path", "algorithm.distill_teacher")
# what a model needs (configs, tokenizer, safetensors weights, chat templates), not other formats
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py"]
DATA_FILES = ["*.parquet", "*.jsonl", "*.json", "*.csv", "*.tsv"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LOCAL_ROOTS = {"models", "runs", "data", "checkpoints", "configs"}  # this repo's folders: never hub owners


def is_repo_id(value: str | Path) -> bool:
    """``owner/name`` that is not a path on this machine (nor under one of :data:`LOCAL_ROOTS`,
    which keeps a missing ``models/tiny`` a local path with its own hint)."""
    text = str(value)
    return (_REPO_ID.match(text) is not None and not Path(text).exists()
            and text.split("/", 1)[0] not in LOCAL_ROOTS)


def _download_hint(repo_id: str, repo_type: str) -> str:
    local = f"models/{repo_id.split('/')[-1].lower()}" if repo_type == "model" else f"data/{repo_id.split('/')[-1]}"
    kind = " --repo-type dataset" if repo_type == "dataset" else ""
    return (f"download it where the network allows (`hf download {repo_id}{kind} --local-dir {local}`), copy "
            f"{local} here and point the config at it, or copy a hub cache into HF_HOME")


def snapshot(repo_id: str, repo_type: str, patterns: list[str], key: str) -> Path:
    """The local snapshot of a hub repo (fetched or cached); DataError naming ``key`` otherwise."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, allow_patterns=patterns))
    except Exception as e:  # offline without a cached copy, unknown repo, gated repo, HTTP errors
        cause = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DataError(f"{key}: {repo_id!r} is not a local path and the Hugging Face hub gave no copy of it "
                        f"({type(e).__name__}: {cause}; cache {HF_HUB_CACHE}); "
                        f"{_download_hint(repo_id, repo_type)}") from None


def resolve_model(value: Path, key: str) -> Path:
    """``value`` itself unless it names a hub model (:func:`is_repo_id`): then its local snapshot."""
    if not is_repo_id(value):
        return value
    path = snapshot(str(value), "model", MODEL_FILES, key)
    if not (path / "config.json").is_file():
        raise DataError(f"{key}: hub repo {str(value)!r} has no config.json (not a transformers model?)")
    return path


def resolve_models(cfg: Any, overrides: list[str]) -> list[str]:
    """Replace hub names in :data:`MODEL_KEYS` of ``cfg`` with local snapshot paths (in place);
    returns ``overrides`` plus ``KEY=PATH`` for each, for the processes ``asyncrl up`` starts."""
    out = list(overrides)
    for key in MODEL_KEYS:
        section, name = key.split(".")
        owner = getattr(cfg, section, None)
        value = getattr(owner, name, None) if owner is not None else None
        if value is None or not is_repo_id(value):
            continue
        path = resolve_model(value, key)
        setattr(owner, name, path)
        out.append(f"{key}={path}")
    return out


def fetch_dataset(repo_id: str, what: str, subdir: str | None = None) -> Path:
    """A hub dataset's data files (``subdir`` of it: a config such as gsm8k's ``main``) as a folder."""
    patterns = [f"{subdir}/{p}" for p in DATA_FILES] if subdir else DATA_FILES  # fnmatch: * spans folders
    folder = snapshot(repo_id, "dataset", patterns, what)
    return folder / subdir if subdir else folder
