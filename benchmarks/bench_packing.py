"""Learner throughput and memory with packed vs padded micro-batches, measured side by side.

One batch with a realistic length spread (prompts 30-90 tokens, responses log-normal with
a long tail up to --max-response) goes through the real Trainer step (GRPO, PPO loss) with
``learner.packing`` on and off, each in its own process so that peak RSS is per mode.
Reports real (non-pad) tokens/s, tokens computed, peak RSS, and the packed/padded ratios::

    python benchmarks/bench_packing.py                 # SmolLM2-135M if imported, else tiny
    python benchmarks/bench_packing.py --smoke         # seconds, tiny model (CI)
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


def make_groups(prompts: int, n: int, max_response: int, vocab: int, seed: int) -> list:
    from asyncrl import schema

    rng = random.Random(seed)
    groups = []
    for gid in range(prompts):
        prompt = [rng.randrange(4, vocab) for _ in range(rng.randint(30, 90))]
        rows = []
        for i in range(n):
            r = min(max_response, max(1, int(rng.lognormvariate(3.6, 0.8))))  # median ~37, long tail
            rows.append({"prompt_id": gid, "group_id": gid, "sample_index": i, "split": "train",
                         "data_source": "bench", "ground_truth": "", "prompt_token_ids": prompt,
                         "response_token_ids": [rng.randrange(4, vocab) for _ in range(r)],
                         "behaviour_logprobs": [-2.0] * r, "response_text": "", "finish_reason": "length",
                         "policy_version": 0, "policy_version_end": 0, "generator_index": 0,
                         "gen_start_time": 0.0, "gen_end_time": 0.0, "reward": rng.random()})
        groups.append(schema.make_batch(rows))
    return groups


def worker(args: argparse.Namespace) -> None:
    import torch

    from asyncrl.config import validate_config
    from learner.fsdp.memory import peak_rss_mb
    from learner.fsdp.model import load_policy
    from learner.step import Trainer

    torch.set_num_threads(args.threads) if args.threads else None
    cfg = validate_config({"model": {"path": args.model}, "data": {"train": "x"},
                           "learner": {"packing": args.mode == "packed", "micro_batch_size": args.mbs,
                                       "max_tokens_per_microbatch": args.budget or None, "lr": 1e-6,
                                       "autocast_bf16": args.bf16}})
    model, tok = load_policy(Path(args.model), "float32")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    trainer = Trainer(model, opt, cfg.learner, cfg.algorithm, tok.pad_token_id or 0, 1.0, args.max_response)
    groups = make_groups(args.prompts, args.n, args.max_response, len(tok), args.seed)
    real = sum(len(r) + len(p) for g in groups for p, r in zip(g.column("prompt_token_ids").to_pylist(),
                                                               g.column("response_token_ids").to_pylist()))
    trainer.step(groups, 0)  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        trainer.step(groups, 0)
        times.append(time.perf_counter() - t0)
    # tokens the forward passes computed on (pad included), from the trainer's own layout
    from learner.batch import pack_rows
    from learner.rollouts import Rollouts, sample_lengths

    lengths = sample_lengths(Rollouts.from_groups(groups, 0))
    ro = Rollouts.from_groups(groups, 0)
    mbs = trainer._chunks(ro, list(range(len(ro.response_ids))))  # every sample: one mini-batch
    computed = 0
    for mb in mbs:
        ls = [lengths[i] for i in mb]
        computed += len(pack_rows(ls, max(ls))[2]) * max(ls) if args.mode == "packed" else len(ls) * max(ls)
    best = min(times)
    print(json.dumps({"mode": args.mode, "step_s": best, "real_tokens": real, "computed_tokens": computed,
                      "micro_batches": len(mbs), "tokens_per_s": real / best, "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-response", type=int, default=256)
    ap.add_argument("--budget", type=int, default=4096, help="learner.max_tokens_per_microbatch (0: none)")
    ap.add_argument("--mbs", type=int, default=1000, help="learner.micro_batch_size (samples per pass)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="learner.autocast_bf16")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny model, small batch: seconds")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--name", default="packing", help="result file name")
    ap.add_argument("--worker", choices=["packed", "padded"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.mode = args.worker
        return worker(args)
    if args.smoke:
        args.prompts, args.n, args.max_response, args.repeats = 2, 4, 64, 1
    with tempfile.TemporaryDirectory() as tmp:
        model = pick_model(args.model, args.smoke, Path(tmp))
        common = [__file__, "--model", str(model), "--prompts", str(args.prompts), "--n", str(args.n),
                  "--max-response", str(args.max_response), "--budget", str(args.budget), "--mbs", str(args.mbs),
                  "--repeats", str(args.repeats), "--seed", str(args.seed), "--threads", str(args.threads)]
        common += ["--bf16"] if args.bf16 else []
        rows = [run_worker(common + ["--worker", mode]) for mode in ("padded", "packed")]
    padded, packed = rows
    ratio = packed["tokens_per_s"] / padded["tokens_per_s"]
    mem = packed["peak_rss_mb"] / padded["peak_rss_mb"]
    md = table(rows, ["mode", "real_tokens", "computed_tokens", "micro_batches", "step_s", "tokens_per_s",
                      "peak_rss_mb"])
    md += (f"\n\nmodel: {model.name}; batch {args.prompts} prompts x {args.n} samples; token budget "
           f"{args.budget or 'none'}, at most {args.mbs} samples per pass\n\n**packed / padded tokens/s = "
           f"{ratio:.2f}x; peak RSS packed / padded = {mem:.2f}**")
    write_results(args.out, args.name, {"model": str(model), "rows": rows, "speedup": ratio, "rss_ratio": mem,
                                        "args": {k: str(v) for k, v in vars(args).items()}}, md)


if __name__ == "__main__":
    main()
