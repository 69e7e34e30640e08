"""Learner MFU on the quickstart's batch, variant by variant, measured side by side in one run.

The real Trainer step (GRPO, PPO-clip loss, AdamW) on a batch shaped like the quickstart's
(4 prompts x 8 samples, ~46 prompt and ~21 response tokens), each variant in its own process:
the compute dtype (fp32; bf16 autocast over fp32 weights; FSDP2 mixed precision, bf16 parameters for
compute, the quickstart's), eager attention instead of SDPA (a ``+eager`` suffix), ``torch.compile``
of the model, micro-batch size and torch threads. Each row gives the best step of ``--repeats``
after a warm-up (and the median step's MFU), where it went (forward, backward, optimiser) and the
learner MFU by asyncrl.flops' convention over asyncrl.peak's measured peak of the variant's dtype and
threads (``asyncrl bench peak`` to refresh it on an idle machine); ``--vary`` trains on a new batch
(new lengths, new tensor shapes) every step, as a run does::

    asyncrl bench learner                                    # SmolLM2-135M if imported, else tiny
    python benchmarks/bench_learner.py --variants autocast,mp+eager --threads 2 --repeats 5 --vary
    python benchmarks/bench_learner.py --profile autocast    # + the top ops of one step
    python benchmarks/bench_learner.py --smoke               # tiny model, one variant, seconds
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import pick_model, run_worker, table, write_results  # noqa: E402

# name -> (learner overrides, weights dtype, compile); a "+eager" suffix: HF's eager attention instead of SDPA
VARIANTS: dict[str, tuple[dict, str, bool]] = {
    "fp32": ({"autocast_bf16": False}, "float32", False),
    "autocast": ({"autocast_bf16": True}, "float32", False),
    "mp": ({"autocast_bf16": False, "mixed_precision": True}, "float32", False),
    "autocast+compile": ({"autocast_bf16": True}, "float32", True),
    "mp+compile": ({"autocast_bf16": False, "mixed_precision": True}, "float32", True),
    "autocast+mbs32": ({"autocast_bf16": True, "micro_batch_size": 32}, "float32", False),
    "mp+mbs32": ({"autocast_bf16": False, "mixed_precision": True, "micro_batch_size": 32}, "float32", False),
}


def make_groups(prompts: int, n: int, prompt_len: int, response_mean: int, vocab: int, seed: int) -> list:
    """Quickstart-shaped groups: one prompt per group, responses spread around ``response_mean``."""
    from asyncrl import schema

    rng = random.Random(seed)
    groups = []
    for gid in range(prompts):
        prompt = [rng.randrange(4, vocab) for _ in range(prompt_len + rng.randint(-3, 3))]
        rows = []
        for i in range(n):
            r = max(1, int(rng.gauss(response_mean, response_mean / 3)))
            rows.append({"prompt_id": gid, "group_id": gid, "sample_index": i, "split": "train",
                         "data_source": "bench", "ground_truth": "", "prompt_token_ids": prompt,
                         "response_token_ids": [rng.randrange(4, vocab) for _ in range(r)],
                         "behaviour_logprobs": [-2.0] * r, "response_text": "", "finish_reason": "stop",
                         "policy_version": 0, "policy_version_end": 0, "generator_index": 0,
                         "gen_start_time": 0.0, "gen_end_time": 0.0, "reward": float(i % 2)})
        groups.append(schema.make_batch(rows))
    return groups


def worker(args: argparse.Namespace) -> None:
    import torch

    from asyncrl.config import validate_config
    from asyncrl.flops import ModelFlops, learner_step_flops
    from asyncrl.peak import peak
    from learner.fsdp.model import load_policy
    from learner.step import Trainer

    name, eager = args.worker.removesuffix("+eager"), args.worker.endswith("+eager")
    overrides, dtype, compiled = VARIANTS[name]
    torch.set_num_threads(args.threads)
    cfg = validate_config({"model": {"path": args.model}, "data": {"train": "x"},
                           "learner": {"lr": 1e-6, "micro_batch_size": 16, **overrides}})
    model, tok = load_policy(Path(args.model), dtype, cfg.learner)
    if eager:
        model.set_attn_implementation("eager")
    if compiled:
        model.compile(dynamic=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    trainer = Trainer(model, opt, cfg.learner, cfg.algorithm, tok.pad_token_id or 0, 0.7, 64)
    model_flops = ModelFlops.from_dir(Path(args.model))

    def batch(seed: int) -> tuple[list, float, int]:
        groups = make_groups(args.prompts, args.n, args.prompt_len, args.response_len, len(tok), seed)
        lengths = [(len(p), len(r)) for g in groups for p, r in zip(g.column("prompt_token_ids").to_pylist(),
                                                                   g.column("response_token_ids").to_pylist())]
        return groups, learner_step_flops(model_flops, lengths), sum(a + b for a, b in lengths)

    compute = "bfloat16" if overrides.get("autocast_bf16") or overrides.get("mixed_precision") else dtype
    groups, flops, tokens = batch(args.seed)
    t0 = time.perf_counter()
    trainer.step(groups, 0)  # warm-up (and compilation)
    warmup = time.perf_counter() - t0
    steps = []  # (FLOP/s, seconds, phase times, FLOPs, tokens)
    for i in range(args.repeats):
        if args.vary:  # a new batch each step (new lengths, so new tensor shapes), as in a run
            groups, flops, tokens = batch(args.seed + i + 1)
        t0 = time.perf_counter()
        trainer.step(groups, 0)
        dt = time.perf_counter() - t0
        steps.append((flops / dt, dt, dict(trainer.times), flops, tokens))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.step(groups, 0)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
    rate, step_s, times, flops, tokens = max(steps, key=lambda s: s[0])  # the best step
    p = peak(compute, args.threads, "cpu")
    print(json.dumps({"variant": args.worker, "compute": compute, "threads": args.threads, "step_s": step_s,
                      "forward_s": times["forward"], "backward_s": times["backward"],
                      "optimizer_s": times["optimizer"],
                      "other_s": step_s - times["forward"] - times["backward"] - times["optimizer"]
                      - times["phase_a"], "warmup_s": warmup, "tflop": flops / 1e12,
                      "gflops": rate / 1e9, "peak_gflops": p / 1e9, "mfu": rate / p, "tokens": tokens,
                      "median_mfu": sorted(s[0] for s in steps)[len(steps) // 2] / p}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--variants", default="fp32,autocast,mp,autocast+mbs32,mp+mbs32,autocast+compile,mp+compile")
    ap.add_argument("--threads", default="2", help="comma list of torch thread counts")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=46)
    ap.add_argument("--response-len", type=int, default=21)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vary", action="store_true", help="a new batch (new lengths) every step, as in a run")
    ap.add_argument("--profile", default="", help="variant whose step is profiled (top ops to stderr)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, one repeat")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.threads = int(args.threads)
        return worker(args)
    from asyncrl.hardware import cpu_name

    if args.smoke:
        args.repeats, args.variants = 1, "mp"
    unknown = [v for v in args.variants.split(",") if v.removesuffix("+eager") not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from {sorted(VARIANTS)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = pick_model(args.model, args.smoke, Path(tmp))
        for threads in args.threads.split(","):
            for v in args.variants.split(","):
                argv = [__file__, "--model", str(model), "--threads", threads, "--prompts", str(args.prompts),
                        "--n", str(args.n), "--prompt-len", str(args.prompt_len), "--response-len",
                        str(args.response_len), "--repeats", str(args.repeats), "--seed", str(args.seed),
                        "--worker", v] + (["--vary"] if args.vary else [])
                argv += ["--profile", v] if args.profile == v else []
                print(f"[bench learner] {v} on {threads} thread(s) ...", flush=True)
                row = run_worker(argv)
                print(f"[bench learner] {v}: step {row['step_s']:.2f} s, MFU {row['mfu']:.1%}", flush=True)
                rows.append(row)
    md = f"CPU: {cpu_name()}; model: {model.name}; batch {args.prompts} prompts x {args.n} samples, " \
         f"~{args.prompt_len} prompt + ~{args.response_len} response tokens\n\n"
    md += table(rows, ["variant", "compute", "threads", "step_s", "forward_s", "backward_s", "optimizer_s",
                       "other_s", "warmup_s", "gflops", "peak_gflops", "mfu", "median_mfu"])
    write_results(args.out, "learner", {"cpu": cpu_name(), "model": str(model), "rows": rows,
                                        "args": {k: str(v) for k, v in vars(args).items()}}, md)


if __name__ == "__main__":
    main()
