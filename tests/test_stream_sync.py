"""Two FSDP2 learner ranks (gloo, torchrun) stream their weights to a receiver running the
generators' real receive code (``receive_state``): after a failed attempt is retried, the
receiver holds exactly the full state dict cast to the generator dtype, in the same buckets as
one rank would send, and rank 0 never held more than two buckets and the gather's slices."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from asyncrl.weight_sync import plan_buckets, tensor_metas
from tests.conftest import free_port
from tests.e2e import REPO

DRIVER = REPO / "benchmarks" / "sync_ranks.py"
BUCKET = 1 << 20  # bf16 bytes: the model below makes ~16 buckets
SLACK = 4 << 20  # allocator and gloo noise (measured ~1.2 MiB above the buffers here)


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for ``proc``; on a timeout kill its session (torchrun and the ranks it started)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{proc.args} timed out:\n{out[-5000:]}") from None
    assert proc.returncode == 0, out[-5000:]
    return out


def test_two_ranks_stream_the_full_state_within_two_buckets(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from cli.model.tiny import write_tiny_model
    from learner.fsdp.model import broadcast_items

    model = write_tiny_model(tmp_path / "model", hidden_size=256, num_layers=8, num_heads=4, num_kv_heads=2,
                             intermediate_size=1024)  # 31.6 MB in fp32
    port, out = free_port(), tmp_path / "out"
    receiver = _start([str(DRIVER), "receive", "--port", str(port), "--out", str(out), "--save"])
    try:
        learner = _start(["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
                          str(DRIVER), "learn", str(model), "--port", str(port), "--out", str(out), "--syncs", "2",
                          "--bucket-bytes", str(BUCKET), "--dtype", "bfloat16", "--fail-first", "--save"])
        _finish(learner, 150)
        _finish(receiver, 30)
    finally:
        if receiver.poll() is None:
            os.killpg(receiver.pid, signal.SIGKILL)
            receiver.wait()

    got, reference = torch.load(out / "received.pt"), torch.load(out / "reference.pt")
    hf = AutoModelForCausalLM.from_pretrained(model)
    one_rank = [list(m) for m in tensor_metas(broadcast_items(hf, dict(hf.state_dict())), "bfloat16")]
    assert [list(m) for m in got["metas"]] == one_rank  # names, dtype, shapes, order: the same buckets
    assert len(plan_buckets(got["metas"], BUCKET)) >= 8
    assert set(got["tensors"]) == set(reference) - {"lm_head.weight"}  # tied: vLLM ties it itself
    for name, t in got["tensors"].items():
        assert t.dtype == torch.bfloat16 and torch.equal(t, reference[name]), name

    result = json.loads((out / "result.json").read_text())
    # two bucket buffers + the gather's send and receive slices (at most the largest parameter in bf16 each)
    budget = 2 * BUCKET + result["largest_param_bytes_fp32"] + SLACK
    assert budget < result["model_bytes_fp32"] / 2  # a full gather onto rank 0 could not pass
    for sync in result["syncs"]:
        assert sync["peak_over_start_bytes"] <= budget, (sync, budget)
