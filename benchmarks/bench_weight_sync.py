"""Weight sync: a full learner -> generators sync in a real run vs a raw gloo broadcast of the
same bytes between two processes, measured in one run of this script.

The full sync is what the learner records as ``weight_sync_s``: from the start of gathering
the state dict, through the bucketed broadcast (cast to the generators' dtype), to every
generator having paused, reloaded the weights into vLLM in place, and resumed serving. The raw
broadcast sends the same number of bytes in the same bucket size over a fresh gloo group and
does nothing else. Also reported: the generators' pause per sync (from their own stats)::

    python benchmarks/bench_weight_sync.py                  # SmolLM2-135M (bf16 generator), 12 syncs
    python benchmarks/bench_weight_sync.py --generators 2
    python benchmarks/bench_weight_sync.py --smoke          # tiny model, 4 syncs

``--ranks`` measures the learner side alone for 1 and 2 learner ranks in one run (each through
``benchmarks/sync_ranks.py``: a torchrun learner and one receiver running the generators'
receive code, no vLLM): sync seconds and GB/s, rank 0's peak extra RSS, the pre-streaming full
gather for comparison, and a raw gloo broadcast of the same bytes::

    python benchmarks/bench_weight_sync.py --ranks          # SmolLM2-135M, bf16, 64 MiB buckets
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asyncrl.hardware import cpu_name  # noqa: E402  (bench_lora imports it from here too)
from benchmarks.common import REPO, SMOLLM2, pick_model, table, write_results  # noqa: E402
from benchmarks.run_control import port_sets, run_up  # noqa: E402


def _raw_rank(rank: int, port: int, nbytes: int, bucket: int, repeats: int, out: mp.Queue[float]) -> None:
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", port, 2, is_master=rank == 0, timeout=timedelta(seconds=120))
    pg = dist.ProcessGroupGloo(store, rank, 2, timedelta(seconds=120))
    sizes = [min(bucket, nbytes - i) for i in range(0, nbytes, bucket)]
    bufs = [torch.ones(s // 2, dtype=torch.bfloat16) for s in sizes]
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    times = []
    for _ in range(repeats + 1):
        pg.barrier().wait()
        t0 = time.perf_counter()
        for b in bufs:
            pg.broadcast([b], opts).wait()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        out.put(statistics.median(times[1:]))


def raw_broadcast_s(nbytes: int, bucket: int, repeats: int) -> float:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q: mp.Queue[float] = ctx.Queue()
    procs = [ctx.Process(target=_raw_rank, args=(r, port, nbytes, bucket, repeats, q)) for r in (0, 1)]
    for p in procs:
        p.start()
    result = q.get(timeout=600)
    for p in procs:
        p.join()
    return result


def _sync_ranks(model: Path, world: int, bucket: int, dtype: str, syncs: int, out: Path, gather: bool) -> dict:
    """One ``benchmarks/sync_ranks.py`` run: ``world`` learner ranks under torchrun and a receiver."""
    import socket
    import subprocess

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    driver = str(REPO / "benchmarks" / "sync_ranks.py")
    common = ["--port", str(ports[0]), "--out", str(out)]
    recv = subprocess.Popen([sys.executable, driver, "receive", *common], cwd=REPO, env=env)
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-port",
            str(ports[1]), driver, "learn", str(model), *common, "--syncs", str(syncs), "--bucket-bytes",
            str(bucket), "--dtype", dtype] + (["--gather"] if gather else [])
    try:
        subprocess.run(argv, cwd=REPO, env=env, check=True, timeout=900)
        recv.wait(60)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    return json.loads((out / "result.json").read_text())


def ranks_rows(model: Path, dtype: str, bucket: int, syncs: int, tmp: Path) -> tuple[list[dict], int, float]:
    """Learner-side sync with 1 and 2 ranks (and 2 ranks gathering the full model, as before
    streaming), then a raw broadcast of the same bytes; medians over the syncs after the first."""
    rows, nbytes = [], 0
    for world, gather, how in ((1, False, "prepacked live parameters"), (2, False, "streamed, 2 bucket buffers"),
                               (2, True, "full gather onto rank 0 (before)")):
        print(f"learner with {world} rank(s): {how}", flush=True)
        res = _sync_ranks(model, world, bucket, dtype, syncs, tmp / f"ranks{world}{'g' if gather else ''}", gather)
        nbytes = res["bytes_per_sync"]
        secs = statistics.median(s["seconds"] for s in res["syncs"][1:])
        rows.append({"learner ranks": world, "sync": how, "seconds": secs, "GB_per_s": nbytes / secs / 1e9,
                     "rank0_first_sync_extra_MiB": res["syncs"][0]["peak_extra_bytes"] / 2**20,
                     "rank0_max_over_start_MiB": max(s["peak_over_start_bytes"] for s in res["syncs"]) / 2**20,
                     "largest_param_MiB_fp32": res["largest_param_bytes_fp32"] / 2**20,
                     "model_MiB_fp32": res["model_bytes_fp32"] / 2**20})
    print(f"raw gloo broadcast of {nbytes / 2**20:.1f} MiB", flush=True)
    raw = raw_broadcast_s(nbytes, bucket, repeats=syncs)
    for r in rows:
        r["vs_raw"] = raw / r["seconds"]
    return rows, nbytes, raw


def model_bytes(model: Path, dtype_bytes: int) -> int:
    """Bytes one sync sends: every parameter once (a tied lm_head is not sent), in the generator dtype."""
    from safetensors import safe_open

    total = 0
    cfg = json.loads((model / "config.json").read_text())
    for f in model.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            for k in st.keys():  # noqa: SIM118 (safe_open has keys(), no __iter__)
                if cfg.get("tie_word_embeddings") and k == "lm_head.weight":
                    continue
                shape = st.get_slice(k).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n * dtype_bytes
    return total


_APPLIED = re.compile(r"weights applied \((?P<path>[^)]+)\): (?P<total>[0-9.]+)s, "
                      r"of which receiving (?P<recv>[0-9.]+)s(?:, re-packing (?P<repack>[0-9.]+)s)?")


def generator_breakdown(log: Path) -> dict[str, object]:
    """The generators' own per-sync split (from rollout/vllm_ext.py's log lines): apply path, seconds
    inside the vLLM worker waiting for the broadcast, and seconds applying; median over the
    syncs after the first (which also decides the path and warms up)."""
    found = [m.groupdict() for m in _APPLIED.finditer(log.read_text(errors="replace"))] if log.is_file() else []
    steady = found[1:] or found
    if not steady:
        return {}
    recv = statistics.median(float(m["recv"]) for m in steady)
    total = statistics.median(float(m["total"]) for m in steady)
    return {"apply_path": ",".join(sorted({m["path"] for m in found})), "worker_receive_s": recv,
            "worker_apply_s": statistics.median(float(m["total"]) - float(m["recv"]) for m in steady),
            "worker_total_s": total, "first_sync_worker_s": float(found[0]["total"]),
            "worker_repack_s": statistics.median(float(m["repack"] or 0) for m in steady)}


def _apply_ab_child(model: str, dtype: str, rounds: int, out: mp.Queue[dict]) -> None:
    """In one engine (worker in this process): vLLM's reload_weights vs rollout.inplace, alternated."""
    import os

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch
    from safetensors.torch import load_file
    from vllm import LLM

    from rollout.inplace import apply_inplace, inspect_model

    llm = LLM(model, dtype=dtype, enforce_eager=True, seed=0, max_model_len=256)
    tied = json.loads((Path(model) / "config.json").read_text()).get("tie_word_embeddings", False)
    state = {}
    for f in sorted(Path(model).glob("*.safetensors")):
        state.update(load_file(f))
    items = [(k, v.to(getattr(torch, dtype))) for k, v in state.items() if not (tied and k == "lm_head.weight")]

    def reload(worker: object) -> float:
        t = time.perf_counter()
        worker.model_runner.reload_weights(weights_iterator=iter(items))  # type: ignore[attr-defined]
        if tied:  # as rollout/vllm_ext.py's fallback does
            head = worker.model_runner.get_model().lm_head  # type: ignore[attr-defined]
            head.quant_method.process_weights_after_loading(head)
        return time.perf_counter() - t

    def inplace(model_: torch.nn.Module) -> float | str:
        plan = inspect_model(model_, None)
        if plan.reason is not None:
            return plan.reason
        t = time.perf_counter()
        apply_inplace(model_, plan, iter(items))
        return time.perf_counter() - t

    res: dict[str, list] = {"reload_weights_s": [], "inplace_s": []}
    for _ in range(rounds):
        res["reload_weights_s"].append(llm.collective_rpc(reload)[0])
        res["inplace_s"].append(llm.apply_model(inplace)[0])
    out.put(res)


def apply_ab(model: Path, dtype: str, rounds: int) -> list[dict[str, object]]:
    """Generator-side apply, both paths side by side on the same live engine; and learner-side
    packing into fresh vs reused bucket buffers (median of ``rounds`` after one warm-up each)."""
    import torch

    from asyncrl.weight_sync import pack_state

    ctx = mp.get_context("spawn")
    q: mp.Queue[dict] = ctx.Queue()
    p = ctx.Process(target=_apply_ab_child, args=(str(model), dtype, rounds + 1, q))
    p.start()
    res = q.get(timeout=900)
    p.join()
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(model.glob("*.safetensors")):
        state.update(load_file(f))
    named = [(k, v.float().clone()) for k, v in state.items() if k != "lm_head.weight"]
    fresh, reused, bufs = [], [], []
    for _ in range(rounds + 1):
        t = time.perf_counter()
        del_me = pack_state(named, dtype, 64 << 20)
        fresh.append(time.perf_counter() - t)
        del del_me
        t = time.perf_counter()
        pack_state(named, dtype, 64 << 20, buffers=bufs)
        reused.append(time.perf_counter() - t)

    def med(xs: list) -> object:
        nums = [x for x in xs[1:] if isinstance(x, float)]
        return statistics.median(nums) if nums else xs[-1]

    return [{"piece": "generator: vLLM reload_weights (+ tied head re-pack)", "seconds": med(res["reload_weights_s"])},
            {"piece": "generator: in-place copy (rollout/inplace.py)", "seconds": med(res["inplace_s"])},
            {"piece": "learner: pack_state into fresh buffers", "seconds": med(fresh)},
            {"piece": "learner: pack_state into reused buffers", "seconds": med(reused)}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--syncs", type=int, default=12)
    ap.add_argument("--generators", type=int, default=1)
    ap.add_argument("--bucket-mb", type=int, default=64)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--pieces", action="store_true",
                    help="only time the pieces side by side: generator apply paths, learner packing")
    ap.add_argument("--ranks", action="store_true",
                    help="only the learner side, for 1 and 2 learner ranks (sync_ranks.py), vs a raw broadcast")
    ap.add_argument("--apply", default="auto",
                    help="rollout.weight_apply modes to run one after the other, comma-separated "
                         "(e.g. reload,auto: vLLM's reload vs the in-place path, side by side)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args()
    if args.ranks:
        main_ranks(args)
        return
    if args.pieces:
        smollm = (SMOLLM2 / "config.json").is_file() and not args.smoke
        model, dtype = (SMOLLM2, "bfloat16") if smollm else (None, "float32")
        with tempfile.TemporaryDirectory() as tmp:
            if model is None:
                from cli.model.tiny import write_tiny_model

                model = write_tiny_model(Path(tmp) / "tiny")
            load_before = os.getloadavg()[0]
            rows = apply_ab(model, dtype, rounds=2 if args.smoke else 4)
        md = table(rows, ["piece", "seconds"]) + (
            f"\n\nmodel {model.name} ({dtype}); machine load (1-min load average, {os.cpu_count()} cores): "
            f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
        write_results(args.out, "weight_sync_pieces", {"rows": rows}, md)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        from cli.data.arith import write_arith

        train, test = write_arith(tmp_path / "data", n_train=400, n_test=8)
        if args.smoke or not (SMOLLM2 / "config.json").is_file():
            from cli.model.tiny import write_tiny_model

            model, config, dtype, dtype_bytes = write_tiny_model(tmp_path / "tiny"), "tiny_cpu.toml", "float32", 4
            args.syncs = min(args.syncs, 4) if args.smoke else args.syncs
        else:
            model, config, dtype, dtype_bytes = SMOLLM2, "quickstart.toml", "bfloat16", 2
        sets = [f"model.path={model}", f"data.train={train}", f"data.test={test}", "learner.val_every=0",
                "learner.val_prompts=1", "learner.save_final=false", f"weight_sync.bucket_mb={args.bucket_mb}",
                f"rollout.num_generators={args.generators}", f"rollout.dtype={dtype}", "learner.sync_every=1",
                "sampling.max_new_tokens=16", "learner.prompts_per_step=2", "sampling.n=4",
                "learner.max_staleness=1"]
        load_before = os.getloadavg()[0]  # 2 cores: anything else running skews every figure
        modes = [m.strip() for m in args.apply.split(",") if m.strip()]
        runs = {m: full_sync_run(REPO / "configs" / config, tmp_path / f"run-{m}", sets, m, args) for m in modes}
        nbytes = model_bytes(model, dtype_bytes)
        print(f"raw gloo broadcast of {nbytes / 2**20:.1f} MiB", flush=True)
        raw = raw_broadcast_s(nbytes, args.bucket_mb << 20, repeats=args.syncs)
    rows = [{"path": "raw gloo broadcast (2 processes)", "seconds": raw, "GB_per_s": nbytes / raw / 1e9}]
    for mode, r in runs.items():
        split = r["split"]
        rows.append({"path": f"full sync into {args.generators} running vLLM generator(s)",
                     "weight_apply": mode, "apply_path": split.get("apply_path", "?"), "seconds": r["full_s"],
                     "GB_per_s": nbytes / r["full_s"] / 1e9, "vs_raw": raw / r["full_s"],
                     "pause_ms": r["pause_ms"], "worker_receive_s": split.get("worker_receive_s"),
                     "worker_apply_s": split.get("worker_apply_s"), "worker_repack_s": split.get("worker_repack_s")})
    last = rows[-1]
    md = table(rows, ["path", "weight_apply", "apply_path", "seconds", "GB_per_s", "vs_raw", "pause_ms",
                      "worker_receive_s", "worker_apply_s", "worker_repack_s"])
    md += (f"\n\nCPU: {cpu_name()}; model {model.name}, {nbytes / 2**20:.1f} MiB per sync ({dtype}), bucket "
           f"{args.bucket_mb} MiB, median of the syncs after the first ({args.syncs} steps per mode, one sync "
           f"each); worker_* are the generator's own medians inside the vLLM worker (repack: re-packing kernel "
           f"handles, part of applying)\n\n**full sync / raw broadcast effective GB/s = {last['vs_raw']:.2f} "
           f"(goal >= 0.5, weight_apply = {last['weight_apply']}); generator pause per sync = "
           f"{last['pause_ms']:.0f} ms**")
    md += (f"\n\nmachine load (1-min load average, {os.cpu_count()} cores): {load_before:.2f} before the run, "
           f"{os.getloadavg()[0]:.2f} after")
    write_results(args.out, "weight_sync", {"rows": rows, "ratio": last["vs_raw"], "pause_ms": last["pause_ms"],
                                            "bytes": nbytes, "cpu": cpu_name(),
                                            "runs": {m: {**r["split"], "sync_s": r["sync_s"]}
                                                     for m, r in runs.items()}}, md)


def full_sync_run(config: Path, run_dir: Path, sets: list[str], mode: str, args: argparse.Namespace) -> dict:
    """One ``asyncrl up`` with ``rollout.weight_apply = mode``: its median sync (after the first),
    the generators' pause per sync, and their own split of each sync (:func:`generator_breakdown`)."""
    print(f"asyncrl up (weight_apply={mode}): {args.syncs} steps, one sync each, {args.generators} generator(s)",
          flush=True)
    run = run_up(config, run_dir, sets + [f"rollout.weight_apply={mode}"] + port_sets(), max_steps=args.syncs,
                 label=f"sync {mode}")
    full = statistics.median(r["weight_sync_s"] for r in run["steps"][1:] or run["steps"])
    gens = [g[-1] for g in run["generators"] if g]
    pause_ms = 1000 * sum(g["paused_s"] for g in gens) / max(1, sum(g["syncs"] for g in gens))
    return {"full_s": full, "pause_ms": pause_ms, "split": generator_breakdown(run_dir.parent / f"{run_dir.name}.log"),
            "sync_s": [r["weight_sync_s"] for r in run["steps"]]}


def main_ranks(args: argparse.Namespace) -> None:
    syncs = 3 if args.smoke else max(3, min(args.syncs, 8))
    with tempfile.TemporaryDirectory() as tmp:
        model = pick_model(None, args.smoke, Path(tmp))
        dtype = "bfloat16"
        load_before = os.getloadavg()[0]
        rows, nbytes, raw = ranks_rows(model, dtype, args.bucket_mb << 20, syncs, Path(tmp))
    digest_s = digest_seconds(nbytes, args.bucket_mb << 20)
    cols = ["learner ranks", "sync", "seconds", "GB_per_s", "vs_raw", "rank0_first_sync_extra_MiB",
            "rank0_max_over_start_MiB"]
    md = table(rows, cols)
    md += (f"\n\nCPU: {cpu_name()}; model {model.name}, {nbytes / 2**20:.1f} MiB per sync ({dtype}), "
           f"bucket {args.bucket_mb} MiB, largest parameter {rows[0]['largest_param_MiB_fp32']:.1f} MiB fp32, "
           f"model {rows[0]['model_MiB_fp32']:.0f} MiB fp32; median of {syncs - 1} syncs after the first; "
           f"raw gloo broadcast of the same bytes (2 processes, same run): {raw:.3f} s = {nbytes / raw / 1e9:.2f} GB/s"
           f"\n\nwith transport.curve_dir (authenticated weights): SHA-256 of the same bytes, bucket by bucket, "
           f"{digest_s:.3f} s = {nbytes / digest_s / 1e9:.2f} GB/s = {digest_s / raw:.2f}x the raw broadcast "
           f"(the learner hashes bucket k while gloo sends it; each receiver while bucket k+1 arrives)"
           f"\n\nmachine load (1-min load average, {os.cpu_count()} cores): {load_before:.2f} before, "
           f"{os.getloadavg()[0]:.2f} after")
    write_results(args.out, "weight_sync_ranks", {"rows": rows, "raw_s": raw, "bytes": nbytes, "cpu": cpu_name(),
                                                  "digest_s": digest_s}, md)


def digest_seconds(nbytes: int, bucket: int) -> float:
    """Seconds to SHA-256 ``nbytes`` in buckets (asyncrl.weight_sync.bucket_digest), median of 3."""
    import torch

    from asyncrl.weight_sync import bucket_digest

    flats = [torch.ones(min(bucket, nbytes - off) // 2, dtype=torch.bfloat16) for off in range(0, nbytes, bucket)]
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for f in flats:
            bucket_digest(f)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


if __name__ == "__main__":
    main()
