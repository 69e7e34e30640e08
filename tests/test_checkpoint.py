"""Resumable checkpoints: sharded model + optimizer state round-trip, rotation, and broken
checkpoints detected with the previous good one used instead."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from asyncrl.errors import CheckpointError
from learner.fsdp.checkpoint import Checkpointer, verify
from learner.fsdp.model import load_policy


def _trained(model_dir: Path, steps: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model, _ = load_policy(model_dir, "float32")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().full_tensor().flatten() for p in model.parameters()])


def test_round_trip_rotation_and_corruption(tiny_model_dir: Path, tmp_path: Path, caplog) -> None:
    ck = Checkpointer(tmp_path / "checkpoints", keep=2)
    model, opt = _trained(tiny_model_dir, 2)
    for step in (1, 2, 3):
        ck.save(step, {"policy": (model, opt)}, {"step": step})
    assert [p.name for p in sorted(ck.root.iterdir())] == ["step_000002", "step_000003"]
    want = _flat(model)

    fresh, fresh_opt = _trained(tiny_model_dir, 0)
    assert not torch.equal(_flat(fresh), want)
    state = ck.load(ck.latest(), {"policy": (fresh, fresh_opt)})
    assert state == {"step": 3}
    assert torch.equal(_flat(fresh), want)
    moments = [s["exp_avg"].full_tensor() for s in fresh_opt.state.values()]
    assert moments and all(m.abs().sum() > 0 for m in moments)  # optimizer state came back too

    # truncate a shard of the newest: it is reported and the previous one is used
    shard = next((ck.root / "step_000003" / "dcp").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:10])
    assert "truncated or corrupt" in verify(ck.root / "step_000003")
    with caplog.at_level(logging.WARNING):
        assert ck.latest() == ck.root / "step_000002"
    assert "step_000003 is unusable" in caplog.text
    with pytest.raises(CheckpointError, match="step_000003 is unusable"):
        ck.load(ck.root / "step_000003", {"policy": (fresh, fresh_opt)})
    # a save that never finished has no manifest
    (ck.root / "step_000002" / "manifest.json").unlink()
    assert ck.latest() is None
    assert json.loads((ck.root / "step_000003" / "manifest.json").read_text())["step"] == 3


def test_sync_state_dict_is_the_full_state_without_a_copy(tiny_model_dir: Path) -> None:
    """One learner rank: the weight sync reads the live (trained) parameters directly; names,
    shapes and values equal the gathered full state dict."""
    from learner.fsdp.model import full_state_dict, sync_state_dict

    model, _ = _trained(tiny_model_dir, 2)
    full, live = full_state_dict(model), sync_state_dict(model)
    assert list(full) == list(live)
    assert all(torch.equal(full[k], live[k]) for k in full)
    emb = dict(model.named_parameters())["model.embed_tokens.weight"]
    assert live["model.embed_tokens.weight"].data_ptr() == emb.to_local().data_ptr()  # a view, not a copy
