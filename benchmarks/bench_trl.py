"""asyncrl against TRL's GRPOTrainer on this machine, both measured in one run of this script.

Same model (SmolLM2-135M-Instruct, local), same arithmetic prompts and reward (``arith``),
group size 8, 4 prompts (32 samples) per optimiser step, 64 new tokens, temperature 0.7,
lr 1e-5, no KL term. TRL generates with HF ``generate`` (its default without a vLLM server);
asyncrl runs ``configs/quickstart.toml`` (vLLM generator, reward worker, FSDP2 learner as
processes). Reported: steady-state seconds per optimiser step (median after warm-up),
samples/s in steady state and end to end (start-up included), and the ratios::

    pip install -e '.[bench]'          # trl, matplotlib
    python benchmarks/bench_trl.py [--steps 8] [--trl-bf16]
    python benchmarks/bench_trl.py --smoke     # tiny model, 2 steps each (CI)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, SMOLLM2, run_worker, table, write_results  # noqa: E402
from benchmarks.run_control import port_sets, run_up  # noqa: E402
from benchmarks.trl_arith import (  # noqa: E402
    add_task_args,
    arith_dataset,
    arith_reward,
    check_batches,
    grpo_config,
    load_policy,
    quickstart_sets,
    require_trl,
    task_argv,
)


def trl_worker(args: argparse.Namespace) -> None:
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a: object, **k: object) -> None:
            stamps.append(time.perf_counter())

    tok, model = load_policy(args.model)
    cfg = grpo_config(args.tmp, prompts=args.prompts, n=args.n, max_new_tokens=args.max_new_tokens,
                      max_steps=args.steps, bf16=args.trl_bf16)
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=arith_reward(), args=cfg,
                          train_dataset=arith_dataset(args.data), callbacks=[Clock()])
    check_batches(trainer, args.prompts, args.n)
    t0 = time.perf_counter()
    trainer.train()
    steps = [b - a for a, b in zip([t0] + stamps[:-1], stamps)]
    print(json.dumps({"step_s": steps, "total_s": time.perf_counter() - t0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--trl-bf16", action="store_true", help="TRL with bf16 (default fp32, TRL's CPU default)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    add_task_args(ap)
    args = ap.parse_args()
    if args.worker:
        return trl_worker(args)
    require_trl("bench_trl")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        from cli.data.arith import write_arith

        train, test = write_arith(tmp_path / "data", n_train=400, n_test=16)
        if args.smoke:
            from cli.model.tiny import write_tiny_model

            model = write_tiny_model(tmp_path / "tiny")
            args.steps, args.n, args.prompts, args.max_new_tokens = 2, 4, 2, 16
        else:
            model = args.model or SMOLLM2
            if not (model / "config.json").is_file():
                sys.exit("bench_trl: import the model first: asyncrl model import-gguf --out models/smollm2-135m")
        print(f"TRL GRPOTrainer: {args.steps} steps", flush=True)
        t0 = time.perf_counter()
        trl_res = run_worker([__file__, "--worker", "--model", str(model), "--data", str(train), "--tmp",
                              str(tmp_path / "trl"), "--steps", str(args.steps), *task_argv(args)]
                             + (["--trl-bf16"] if args.trl_bf16 else []))
        trl_wall = time.perf_counter() - t0
        print(f"asyncrl quickstart config: {args.steps} steps", flush=True)
        sets = quickstart_sets(model, train, test, args) + ["learner.val_every=0", "learner.val_prompts=1"]
        t0 = time.perf_counter()
        ours = run_up(REPO / "configs" / "quickstart.toml", tmp_path / "asyncrl", sets + port_sets(),
                      max_steps=args.steps, label="asyncrl")
        our_wall = time.perf_counter() - t0
    samples = args.prompts * args.n
    warm = 2 if args.steps > 3 else 0
    trl_step = statistics.median(trl_res["step_s"][warm:])
    our_step = statistics.median([r["step_s"] for r in ours["steps"]][warm:])
    rows = [{"trainer": "TRL GRPOTrainer (HF generate)", "s_per_step": trl_step, "samples_per_s": samples / trl_step,
             "end_to_end_samples_per_s": samples * args.steps / trl_wall, "wall_s": trl_wall},
            {"trainer": "asyncrl (vLLM + FSDP2, async)", "s_per_step": our_step, "samples_per_s": samples / our_step,
             "end_to_end_samples_per_s": samples * args.steps / our_wall, "wall_s": our_wall}]
    ratio = trl_step / our_step
    md = table(rows, ["trainer", "s_per_step", "samples_per_s", "end_to_end_samples_per_s", "wall_s"])
    md += (f"\n\nmodel {model.name}; {args.prompts} prompts x {args.n} samples per step, {args.max_new_tokens} new "
           f"tokens, T=0.7, lr 1e-5, beta 0, {args.steps} steps each; TRL {'bf16' if args.trl_bf16 else 'fp32'}, "
           f"asyncrl: vLLM bf16 generator, fp32 learner with bf16 autocast, max_staleness 2; steady state = "
           f"median step after {warm} warm-up steps\n\n**asyncrl / TRL samples/s (steady state) = {ratio:.2f}x; "
           f"end to end = {rows[1]['end_to_end_samples_per_s'] / rows[0]['end_to_end_samples_per_s']:.2f}x**")
    write_results(args.out, "trl", {"rows": rows, "speedup": ratio, "trl_step_s": trl_res["step_s"],
                                    "asyncrl_step_s": [r["step_s"] for r in ours["steps"]]}, md)


if __name__ == "__main__":
    main()
