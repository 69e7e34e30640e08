"""Hub names (asyncrl/hub.py): a model or dataset given as ``owner/name`` resolves to its copy in a
directory laid out like the Hugging Face hub cache, offline; with no copy the command fails at once
(exit 2) naming the key and the download command. Nothing here reaches the network
(``HF_HUB_OFFLINE=1``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asyncrl.hub import is_repo_id
from tests.conftest import data_overrides
from tests.e2e import REPO
from tests.test_data import GSM8K_ROWS

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache_snapshot(cache: Path, repo_type: str, repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` at ``main`` in a hub cache (``<type>s--owner--name/refs/main``
    naming ``snapshots/<commit>/``), created empty."""
    root = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    return snap


def _cli(cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)


def test_repo_ids_and_local_paths(tmp_path: Path) -> None:
    assert is_repo_id("Qwen/Qwen2.5-0.5B-Instruct") and is_repo_id("openai/gsm8k")
    assert not is_repo_id("models/tiny")  # this repo's folders stay local paths (with their own hint)
    assert not is_repo_id("/abs/model") and not is_repo_id("./x/y") and not is_repo_id("plain")
    (tmp_path / "org").mkdir()
    os.chdir(tmp_path)
    try:
        (tmp_path / "org" / "model").mkdir()
        assert not is_repo_id("org/model")  # exists here: a local directory wins, as in transformers
    finally:
        os.chdir(REPO)


def test_model_from_a_hub_cache_offline(tmp_path: Path, tiny_model_dir: Path, arith_dir: Path) -> None:
    """``model.path = "someorg/tiny-llama"`` resolves to the cached snapshot, and ``asyncrl up``
    hands every process that local path."""
    cache = tmp_path / "hub"
    snap = hub_cache_snapshot(cache, "model", "someorg/tiny-llama")
    for f in tiny_model_dir.iterdir():
        shutil.copy(f, snap / f.name)
    sets = [s for s in data_overrides(tiny_model_dir, arith_dir) if not s.startswith("model.path")]
    args = ["up", str(REPO / "configs" / "tiny_cpu.toml"), "--dry-run", "--set", "model.path=someorg/tiny-llama"]
    res = _cli(cache, *args, *[a for s in sets for a in ("--set", s)])
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"model.path={snap}" in res.stdout  # in each child's command line


def test_missing_model_offline_fails_at_once_naming_the_download(tmp_path: Path, arith_dir: Path) -> None:
    t0 = time.monotonic()
    res = _cli(tmp_path / "empty-cache", "up", str(REPO / "configs" / "tiny_cpu.toml"), "--set",
               "model.path=someorg/absent-model", "--set", f"data.train={arith_dir / 'train.parquet'}")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "model.path: 'someorg/absent-model' is not a local path" in res.stderr
    assert "hf download someorg/absent-model --local-dir models/absent-model" in res.stderr
    assert time.monotonic() - t0 < 60


def test_gsm8k_without_source_reads_the_hub_cache(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    snap = hub_cache_snapshot(cache, "dataset", "openai/gsm8k")
    (snap / "main").mkdir()
    for split, rows in (("train", GSM8K_ROWS[:15]), ("test", GSM8K_ROWS[15:])):
        pq.write_table(pa.Table.from_pylist(rows), snap / "main" / f"{split}-00000-of-00001.parquet")
    (snap / "socratic").mkdir()  # the other config: not read
    pq.write_table(pa.Table.from_pylist(GSM8K_ROWS[:1]), snap / "socratic" / "train-00000-of-00001.parquet")
    res = _cli(cache, "data", "gsm8k", "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert pq.read_table(tmp_path / "out" / "train.parquet").num_rows == 15
    assert pq.read_table(tmp_path / "out" / "test.parquet").num_rows == 5
    offline = _cli(tmp_path / "empty-cache", "data", "gsm8k", "--out", str(tmp_path / "o2"))
    assert offline.returncode == 2 and "Traceback" not in offline.stderr
    assert "hf download openai/gsm8k --repo-type dataset" in offline.stderr


def test_eval_model_argument_takes_a_hub_name(tmp_path: Path, tiny_model_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hub

    from cli.evaluate import resolve_model

    snap = hub_cache_snapshot(tmp_path / "hub", "model", "someorg/tiny-llama")
    for f in tiny_model_dir.iterdir():
        shutil.copy(f, snap / f.name)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    path, note = resolve_model(Path("someorg/tiny-llama"))
    assert path == snap and "hub model someorg/tiny-llama" in note
