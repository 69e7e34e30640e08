"""`make gpu-check`: the learner's GPU path on one CUDA device, without vLLM, in a few minutes.

Runs from the source tree without installing the package (``PYTHONPATH=.``), on a machine that
has torch with CUDA, transformers, pyarrow, msgpack and pydantic (``make gpu-wheels`` brings
pydantic and pyzmq as wheels for machines without them) and no network. It measures, in one
process and one run:

1. the GPU's bf16 matmul peak (``n x n @ n x n`` in a loop), the yardstick for MFU;
2. the real learner step (:class:`learner.step.Trainer`: GRPO advantages, PPO loss, backward,
   clip, AdamW) on a random ~0.9B Llama loaded by :func:`learner.fsdp.model.load_policy` (FSDP2,
   world size 1, bf16 mixed precision with fp32 master weights, packed rows): tokens/s and
   MFU = 6 x matmul params x tokens/s / measured peak (attention FLOPs not counted);
3. packed rows give the same log-probs as padded rows on this device (max |difference|);
4. the weight-sync packing path: :func:`asyncrl.weight_sync.pack_state` from the live
   parameters into bf16 CUDA buckets (fresh and reused buffers, GB/s), every packed tensor
   checked bit for bit, then one ``broadcast_packed`` over a world-size-1
   :class:`asyncrl.weight_sync.SyncGroup` (NCCL on CUDA: constructs the group, broadcasts,
   polls ``is_completed``, aborts);
5. ``torch.cuda`` peak memory and its memory summary.

Results: ``<out>/gpu_check.json``, ``gpu_check.md`` and ``memory_summary.txt``::

    make gpu-check                                          # on the GPU machine, < 10 min
    PYTHONPATH=. python -m benchmarks.gpu_check --device cpu --smoke   # seconds, here (the test)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import table, write_results  # noqa: E402

# Model shapes: full ~0.9B parameters (head_dim 128, GQA 2:1, untied head), smoke a few hundred K.
FULL = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
            num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=8192)
SMOKE = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


def environment(device: str) -> dict[str, Any]:
    import torch
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "device": device,
           "python": sys.version.split()[0]}
    if device == "cuda":
        env.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                   gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
        try:
            v = torch.cuda.nccl.version()
            env["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            env["nccl"] = f"unavailable ({e})"
    return env


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str, n: int, iters: int) -> dict[str, Any]:
    """Best of 3 timed loops of ``iters`` bf16 ``n x n`` matmuls (fp32 on CPUs without native bf16)."""
    import torch

    from asyncrl.hardware import fast_bf16

    dtype = torch.bfloat16 if device == "cuda" or fast_bf16() else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "iters": iters,
            "tflops": 2 * n**3 * iters / best / 1e12}


def write_model(out: Path, shape: dict[str, int], seed: int) -> Path:
    """A random-init float32 Llama plus the character tokenizer (only its pad id is used)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from cli.model.tiny import build_char_tokenizer

    cfg = LlamaConfig(**shape, head_dim=shape["hidden_size"] // shape["num_attention_heads"],
                      tie_word_embeddings=False, rms_norm_eps=1e-5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(out)
    build_char_tokenizer().save_pretrained(out)
    return out


def make_groups(prompts: int, n: int, prompt_len: tuple[int, int], response_len: tuple[int, int],
                vocab: int, seed: int) -> list:
    """Rollout groups as the reward workers send them (Arrow): random tokens and rewards, lengths
    drawn uniformly from the given ranges; the other fields as in ``bench_packing``'s groups."""
    from asyncrl import schema
    from benchmarks.bench_packing import make_groups as packing_groups

    template = packing_groups(1, 1, 1, vocab, seed)[0].to_pylist()[0]
    for per_token in ("loss_mask", "token_versions", "turn_starts"):  # derived again for each new response
        del template[per_token]
    rng = random.Random(seed)
    groups = []
    for gid in range(prompts):
        prompt = [rng.randrange(4, vocab) for _ in range(rng.randint(*prompt_len))]
        rows = []
        for i in range(n):
            r = rng.randint(*response_len)
            rows.append({**template, "prompt_id": gid, "group_id": gid, "sample_index": i, "prompt_token_ids": prompt,
                         "response_token_ids": [rng.randrange(4, vocab) for _ in range(r)],
                         "behaviour_logprobs": [-10.0] * r, "reward": rng.random()})
        groups.append(schema.make_batch(rows))
    return groups


def learner_step(args: argparse.Namespace, model_dir: Path, device: str, peak_tflops: float,
                 ) -> tuple[dict[str, Any], Any, Any]:
    """Time the real Trainer step; return its figures, the FSDP2 model and the tokenizer."""
    import torch

    from asyncrl.config import validate_config
    from learner.fsdp.model import load_policy
    from learner.step import Trainer

    cfg = validate_config({
        "model": {"path": str(model_dir)}, "data": {"train": "unused"},
        "sampling": {"n": args.n, "max_new_tokens": args.response_len[1]},
        "learner": {"packing": True, "mixed_precision": True, "gradient_checkpointing": args.checkpointing,
                    "max_tokens_per_microbatch": args.budget, "pack_row_tokens": args.row_tokens,
                    "micro_batch_size": 100_000, "prompts_per_step": args.prompts, "lr": 1e-6}})
    t0 = time.perf_counter()
    model, tok = load_policy(model_dir, "float32", cfg.learner)
    load_s = time.perf_counter() - t0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    trainer = Trainer(model, opt, cfg.learner, cfg.algorithm, tok.pad_token_id or 0, 1.0, args.response_len[1])
    groups = make_groups(args.prompts, args.n, args.prompt_len, args.response_len, args.shape["vocab_size"],
                         args.seed)
    tokens = sum(len(p) + len(r) for g in groups for p, r in zip(g.column("prompt_token_ids").to_pylist(),
                                                                g.column("response_token_ids").to_pylist()))
    times, stats = [], {}
    for _ in range(args.steps + 1):  # the first step warms up (allocator, kernels): not timed
        _sync(device)
        t = time.perf_counter()
        stats = trainer.step(groups, 0)  # version 0: the samples are never stale (none dropped)
        _sync(device)
        times.append(time.perf_counter() - t)
    step_s = sorted(times[1:])[len(times[1:]) // 2]
    embed = model.get_input_embeddings().weight
    n_params = sum(p.numel() for p in model.parameters())
    matmul_params = n_params - embed.numel()
    tps = tokens / step_s
    out = {"params": n_params, "matmul_params": matmul_params, "load_s": load_s,
           "tokens_per_step": tokens, "micro_batches": _micro_batches(trainer, _rollouts(groups)),
           "step_s_median": step_s, "step_s_all": times, "tokens_per_s": tps,
           "model_tflops": 6 * matmul_params * tps / 1e12, "loss": stats.get("loss"),
           "grad_norm": stats.get("grad_norm")}
    out["mfu"] = out["model_tflops"] / peak_tflops
    return out, model, tok


def _micro_batches(trainer: Any, ro: Any) -> int:
    """How many micro-batches the Trainer cuts the whole batch into (one PPO mini-batch)."""
    return len(trainer._chunks(ro, list(range(len(ro.response_ids)))))


def _rollouts(groups: list) -> Any:
    from learner.rollouts import Rollouts

    return Rollouts.from_groups(groups, 0)


def packed_vs_padded(model: Any, pad_id: int, device: str, vocab: int, seed: int) -> float:
    """Max |log-prob difference| between packed and padded layouts of the same 6 samples."""
    import torch

    from learner.batch import build_batch
    from learner.step import policy_forward

    rng = random.Random(seed + 1)
    prompts = [[rng.randrange(4, vocab) for _ in range(rng.randint(3, 40))] for _ in range(6)]
    responses = [[rng.randrange(4, vocab) for _ in range(rng.randint(1, 60))] for _ in range(6)]
    beh = [[0.0] * len(r) for r in responses]
    got = []
    with torch.no_grad():
        for packed in (True, False):
            tb = build_batch(prompts, responses, beh, pad_id, packed=packed, row_tokens=128).to(device)
            got.append(tb.gather_response(policy_forward(model, tb, 1.0)[0]))
    return max(abs(a - b) for ra, rb in zip(*got) for a, b in zip(ra, rb))


def sync_packing(model: Any, device: str, bucket_mb: int) -> dict[str, Any]:
    """pack_state from the live parameters into bf16 buckets on ``device``; check; broadcast once."""
    import torch

    from asyncrl.weight_sync import SyncGroup, broadcast_packed, default_backend, pack_state, plan_buckets, tensor_metas
    from learner.fsdp.model import broadcast_items, sync_state_dict

    items = broadcast_items(model, sync_state_dict(model))
    bucket, buffers, secs = bucket_mb << 20, [], []
    for _ in range(3):  # fresh buffers, then reused ones
        _sync(device)
        t = time.perf_counter()
        flats = pack_state(items, "bfloat16", bucket, device, buffers)
        _sync(device)
        secs.append(time.perf_counter() - t)
    nbytes = sum(f.numel() * f.element_size() for f in flats)
    metas = tensor_metas(items, "bfloat16")
    exact = all(torch.equal(piece.view(items[i][1].shape), items[i][1].detach().to(torch.bfloat16))
                for k, b in enumerate(plan_buckets(metas, bucket))
                for i, piece in zip(b, torch.split(flats[k], [items[i][1].numel() for i in b])))
    backend = default_backend()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    group = SyncGroup("127.0.0.1", port, 0, 1, timeout_s=120, backend=backend)
    t = time.perf_counter()
    broadcast_packed(group, flats)
    _sync(device)
    bcast = time.perf_counter() - t
    group.abandon()
    return {"tensors": len(items), "buckets": len(flats), "bytes": nbytes, "pack_fresh_s": secs[0],
            "pack_reused_s": min(secs[1:]), "pack_reused_GB_per_s": nbytes / min(secs[1:]) / 1e9,
            "packed_exact": exact, "group_backend": backend, "group_world_size": 1,
            "broadcast_world1_s": bcast}


def memory(device: str, out: Path) -> dict[str, Any]:
    import torch

    if device != "cuda":
        from learner.fsdp.memory import peak_rss_mb

        return {"peak_rss_mib": peak_rss_mb()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory_summary.txt").write_text(torch.cuda.memory_summary(abbreviated=True))
    return {"max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "max_reserved_gib": torch.cuda.max_memory_reserved() / 2**30}


def report(res: dict[str, Any]) -> str:
    """A markdown table of whatever sections completed, then the errors of those that did not."""
    rows: list[dict[str, str]] = []
    if mm := res.get("matmul_peak"):
        rows.append({"what": f"{mm['dtype']} matmul {mm['n']}^3 (peak)", "figure": f"{mm['tflops']:.4g} TFLOP/s"})
    if lr := res.get("learner"):
        rows += [
            {"what": f"learner step ({lr['params'] / 1e9:.2f}B params, {lr['tokens_per_step']} tokens, "
                     f"{lr['micro_batches']} micro-batches)", "figure": f"{lr['step_s_median']:.3f} s"},
            {"what": "learner tokens/s", "figure": f"{lr['tokens_per_s']:.0f}"},
            {"what": "learner model TFLOP/s (6 x matmul params x tokens/s)", "figure": f"{lr['model_tflops']:.4g}"},
            {"what": "MFU vs measured peak", "figure": f"{lr['mfu']:.3f}"},
            {"what": "loss, grad norm (finite?)", "figure": f"{lr['loss']:.4g}, {lr['grad_norm']:.4g}"}]
    if "packed_vs_padded_max_abs" in res:
        rows.append({"what": "packed vs padded log-probs, max abs diff",
                     "figure": f"{res['packed_vs_padded_max_abs']:.2e}"})
    if sp := res.get("sync_packing"):
        rows += [
            {"what": f"pack_state into reused bf16 buffers ({sp['bytes'] / 2**30:.2f} GiB, {sp['buckets']} buckets)",
             "figure": f"{sp['pack_reused_s']:.4f} s = {sp['pack_reused_GB_per_s']:.1f} GB/s"},
            {"what": "pack_state into fresh buffers", "figure": f"{sp['pack_fresh_s']:.4f} s"},
            {"what": "packed buckets equal the parameters (bf16, bit for bit)", "figure": str(sp["packed_exact"])},
            {"what": f"{sp['group_backend']} SyncGroup world 1: broadcast_packed",
             "figure": f"{sp['broadcast_world1_s']:.4f} s"}]
    if mem := res.get("memory"):
        rows.append({"what": "memory", "figure": ", ".join(f"{k} {v:.1f}" for k, v in mem.items())})
    env = ", ".join(f"{k} {v}" for k, v in res["environment"].items())
    errors = "".join(f"\n\n**{name} failed:**\n```\n{tb}\n```" for name, tb in res.get("errors", {}).items())
    return f"{env}\n\n" + table(rows, ["what", "figure"]) + errors


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--smoke", action="store_true", help="tiny model and batch: seconds (CPU test)")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_check"))
    ap.add_argument("--steps", type=int, default=3, help="timed learner steps (after one warm-up step)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--budget", type=int, default=16384, help="learner.max_tokens_per_microbatch")
    ap.add_argument("--row-tokens", type=int, default=4096, help="learner.pack_row_tokens")
    ap.add_argument("--checkpointing", action="store_true", help="learner.gradient_checkpointing")
    ap.add_argument("--matmul-n", type=int, default=8192)
    ap.add_argument("--bucket-mb", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.prompt_len, args.response_len, args.shape = (64, 256), (256, 1536), FULL
    if args.smoke:
        args.steps, args.prompts, args.n, args.budget, args.row_tokens = 1, 2, 4, 128, 96
        args.matmul_n, args.bucket_mb = 256, 1
        args.prompt_len, args.response_len, args.shape = (4, 16), (4, 40), SMOKE
    return args


def _section(res: dict[str, Any], name: str, fn: Callable[[], Any], out: Path) -> Any:
    """Run one part; a failure is recorded (with its traceback) and the parts after it still run.
    The results so far are written after every part, so a run cut short still leaves them."""
    try:
        value = fn()
    except Exception:  # noqa: BLE001 - recorded in the results; main exits non-zero
        res.setdefault("errors", {})[name] = traceback.format_exc(limit=8)[-3000:]
        print(f"gpu_check: {name} failed:\n{res['errors'][name]}", file=sys.stderr)
        value = None
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.partial.json").write_text(json.dumps(res, indent=1, default=str))
    return value


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initialises CUDA
    import torch

    device = "cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and device != "cuda":
        raise SystemExit("--device cuda: torch sees no CUDA device")
    res: dict[str, Any] = {"environment": environment(device), "args": {k: str(v) for k, v in vars(args).items()}}
    peak = _section(res, "matmul_peak", lambda: matmul_peak(device, args.matmul_n, 10 if args.smoke else 100), args.out)
    res["matmul_peak"] = peak
    with tempfile.TemporaryDirectory() as tmp:
        def learner() -> tuple[dict[str, Any], Any, Any]:
            model_dir = write_model(Path(tmp) / "model", args.shape, args.seed)
            return learner_step(args, model_dir, device, peak["tflops"] if peak else float("nan"))

        res["learner"], model, tok = _section(res, "learner", learner, args.out) or (None, None, None)
    if model is not None:
        res["packed_vs_padded_max_abs"] = _section(res, "packed_vs_padded", lambda: packed_vs_padded(
            model, tok.pad_token_id or 0, device, args.shape["vocab_size"], args.seed), args.out)
        res["sync_packing"] = _section(res, "sync_packing", lambda: sync_packing(model, device, args.bucket_mb),
                                       args.out)
    res["memory"] = _section(res, "memory", lambda: memory(device, args.out), args.out)
    res = {k: v for k, v in res.items() if v is not None}
    write_results(args.out, "gpu_check", res, report(res))
    (args.out / "gpu_check.partial.json").unlink(missing_ok=True)
    if res.get("errors"):
        raise SystemExit(f"gpu_check: {len(res['errors'])} part(s) failed: {', '.join(res['errors'])}")


if __name__ == "__main__":
    main()
