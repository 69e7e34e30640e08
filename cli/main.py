"""The ``asyncrl`` command line: thin entry points that validate, then call ``main``."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from asyncrl.config import ConfigError, RunConfig, load_config

app = typer.Typer(help="asyncrl: asynchronous RL post-training for LLMs (vLLM generators, reward "
                       "workers and an FSDP2 learner as separate processes).",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

try:  # sub-apps (data preparation, model tools, cluster deployment)
    from cli.data import commands as _data
    from cli.deploy import commands as _deploy
    from cli.model import commands as _model
    from cli.sandbox import app as _sandbox_app
    app.add_typer(_data.app, name="data", help="Prepare datasets (veRL parquet schema).")
    app.add_typer(_model.app, name="model", help="Create or import model directories.")
    app.add_typer(_deploy.app, name="deploy", help="Render a run for Slurm (sbatch script) or Kubernetes.")
    app.add_typer(_sandbox_app, name="sandbox", help="Run untrusted Python the way code rewards do.")
except ImportError:  # pragma: no cover - only while a sub-app is missing
    pass

SET_HELP = "Override any key, e.g. --set learner.lr=1e-5 (repeatable)."
RESUME_HELP = "Continue from the newest complete checkpoint in <run.dir>/checkpoints (same as --set run.resume=true)."


def _overrides(sets: list[str], run_dir: Path | None, max_steps: int | None) -> list[str]:
    overrides = list(sets)
    if run_dir is not None:
        overrides.append(f"run.dir={run_dir}")
    if max_steps is not None:
        overrides.append(f"run.max_steps={max_steps}")
    return overrides


def _load(config: Path, sets: list[str], run_dir: Path | None = None,
          max_steps: int | None = None, resume: bool = False) -> tuple[RunConfig, list[str]]:
    overrides = _overrides(sets, run_dir, max_steps) + (["run.resume=true"] if resume else [])
    cfg: RunConfig = load_config(config, overrides)
    from asyncrl.hub import resolve_models
    return cfg, resolve_models(cfg, overrides)  # hub names -> local snapshots, for every child too


def _run(role: str, fn: Callable[[], object]) -> None:
    """The one error handler per process: bad input → exit 2, failures → exit 1."""
    from asyncrl.curve import CurveError
    from asyncrl.data.format import DataError
    from asyncrl.errors import CheckpointError, PeerMissing
    from asyncrl.placement import PlacementError

    try:
        fn()
    except (ConfigError, DataError, CheckpointError, CurveError, PlacementError) as e:
        typer.echo(f"asyncrl {role}: {e}", err=True)
        raise typer.Exit(2) from None
    except PeerMissing as e:  # a bounded wait ran out: the message names who did not come
        typer.echo(f"asyncrl {role}: {e}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as e:
        traceback.print_exc()
        typer.echo(f"asyncrl {role}: failed: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(1) from e


def _setup_logging(name: str, cfg: Any) -> None:
    from asyncrl.log import setup_logging
    setup_logging(name, cfg.logging.level)


def _check_trackers(cfg: Any) -> None:
    """A [logging] backend whose package is missing: exit 2 now, not after the model has loaded."""
    from asyncrl.trackers import check_trackers
    check_trackers(cfg.logging)


@app.command()
def up(config: Path = typer.Argument(..., help="Run config (TOML)."),
       run_dir: Path | None = typer.Option(None, "--run-dir", help="Override run.dir."),
       max_steps: int | None = typer.Option(None, "--max-steps", help="Override run.max_steps."),
       resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
       dry_run: bool = typer.Option(False, "--dry-run", help="Validate, then print every process with its "
                                    "command line, devices and addresses; start nothing."),
       verbose: bool = typer.Option(False, "--verbose", "-v", help="Every line of every process on the console "
                                    "(vLLM's included), instead of the live view a terminal gets; "
                                    "<run.dir>/logs/<process>.log has them either way."),
       set_: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Validate CONFIG once, then start all generators, reward workers and the learner as processes."""
    def go() -> None:
        cfg, overrides = _load(config, set_, run_dir, max_steps, resume)
        _setup_logging("up", cfg)
        _check_trackers(cfg)
        from asyncrl.launcher import run_up
        from cli.preflight import check_inputs
        check_inputs(cfg)
        if dry_run:
            from asyncrl.procplan import describe_plan
            typer.echo(describe_plan(cfg, config, overrides))
            return
        code = run_up(cfg, config, overrides, verbose=verbose)
        if code:
            raise typer.Exit(code)
    _run("up", go)


@app.command()
def learner(config: Path = typer.Argument(..., help="Run config (TOML)."),
            resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
            node_rank: int = typer.Option(0, "--node-rank", help="This host's learner node (0..learner.nnodes-1); "
                                          "node 0 runs rank 0, which talks to generators and reward workers."),
            set_: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Run the learner (binds the dispatch and trajectory sockets, hosts the weight-sync group). With
    learner.world_size > 1 this starts torchrun for this node's ranks."""
    def go() -> None:
        cfg, overrides = _load(config, set_, resume=resume)
        _setup_logging("learner", cfg)
        if node_rank == 0:  # rank 0 logs
            _check_trackers(cfg)
        import os
        if cfg.learner.world_size > 1 and "RANK" not in os.environ:
            from asyncrl.launcher import run_torchrun
            code = run_torchrun(cfg, config, overrides, node_rank)
            if code:
                raise typer.Exit(code)
            return
        from asyncrl.placement import apply_placement
        apply_placement(cfg, "learner")
        from learner.train import main
        main(cfg)
    _run("learner", go)


@app.command()
def rollout(config: Path = typer.Argument(..., help="Run config (TOML)."),
            index: int = typer.Option(0, "--index", help="Generator index (0..rollout.num_generators-1)."),
            set_: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Run one vLLM rollout generator (connects to the learner's addresses from CONFIG)."""
    def go() -> None:
        cfg, _ = _load(config, set_)
        _setup_logging(f"rollout-{index}", cfg)
        from asyncrl.procplan import check_model_fits
        check_model_fits(cfg)
        from rollout.worker import main
        main(cfg, index)
    _run("rollout", go)


@app.command()
def reward(config: Path = typer.Argument(..., help="Run config (TOML)."),
           index: int = typer.Option(0, "--index", help="Reward worker index (0..reward.num_workers-1)."),
           set_: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Run one reward worker (binds transport.rewards[INDEX], forwards to the learner)."""
    def go() -> None:
        cfg, _ = _load(config, set_)
        _setup_logging(f"reward-{index}", cfg)
        from asyncrl.placement import apply_placement
        apply_placement(cfg, "reward", index)
        from reward.worker import main
        main(cfg, index)
    _run("reward", go)


@app.command()
def sft(config: Path = typer.Argument(..., help="SFT config (TOML), see configs/sft/."),
        run_dir: Path | None = typer.Option(None, "--run-dir", help="Override run.dir."),
        max_steps: int | None = typer.Option(None, "--max-steps", help="Override run.max_steps."),
        set_: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Supervised fine-tuning on prompt/response (or chat messages) parquet; loss on responses only."""
    def go() -> None:
        from asyncrl.train_config import SFTConfig
        cfg = load_config(config, _overrides(set_, run_dir, max_steps), schema=SFTConfig)
        from asyncrl.hub import resolve_models
        resolve_models(cfg, [])  # a hub name in model.path: its local snapshot
        _setup_logging("sft", cfg)
        _check_trackers(cfg)
        from asyncrl.data.supervised import check_sft_inputs
        inputs = check_sft_inputs(cfg.model.path, cfg.data)  # bad input: exit 2 before torch is imported
        from learner.supervised.sft import main
        main(cfg, inputs)
    _run("sft", go)


@app.command("rm-train")
def rm_train(config: Path = typer.Argument(..., help="Reward-model config (TOML), see configs/rm/."),
             run_dir: Path | None = typer.Option(None, "--run-dir", help="Override run.dir."),
             max_steps: int | None = typer.Option(None, "--max-steps", help="Override run.max_steps."),
             set_: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Bradley-Terry reward-model training on prompt/chosen/rejected parquet."""
    def go() -> None:
        from asyncrl.train_config import RMConfig
        cfg = load_config(config, _overrides(set_, run_dir, max_steps), schema=RMConfig)
        from asyncrl.hub import resolve_models
        resolve_models(cfg, [])  # a hub name in model.path: its local snapshot
        _setup_logging("rm-train", cfg)
        _check_trackers(cfg)
        from asyncrl.data.supervised import check_preference_inputs
        inputs = check_preference_inputs(cfg.model.path, cfg.data)  # bad input: exit 2 before torch is imported
        from learner.supervised.rm_train import main
        main(cfg, inputs)
    _run("rm-train", go)


@app.command("eval")
def eval_(model: Path = typer.Argument(..., metavar="MODEL_OR_CHECKPOINT",
                                       help="HF model directory, or a run directory (its checkpoints/final, "
                                       "else its newest checkpoints/step_N export)."),
          data: list[Path] = typer.Option(..., "--data", help="Parquet set in veRL's schema (repeatable)."),
          n: int = typer.Option(4, "--n", help="Sampled replies per prompt (K of mean@K, pass@k, maj@K)."),
          temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature of the K replies."),
          top_p: float = typer.Option(1.0, "--top-p"),
          k: list[int] = typer.Option([], "--k", help="pass@k to report (repeatable; default 1, 2, 4, ... and K)."),
          reward: list[str] = typer.Option([], "--reward", help="Reward for every row (NAME, module:function or "
                                           "file.py:function), or DATA_SOURCE=NAME; default by data_source."),
          max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
          max_prompt_tokens: int = typer.Option(1024, "--max-prompt-tokens",
                                                help="Longer prompts are dropped (counted)."),
          dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16 (as rollout.dtype)."),
          seed: int = typer.Option(0, "--seed", help="Engine and per-prompt sampling seed."),
          limit: int | None = typer.Option(None, "--limit", help="First N rows of each set."),
          out: Path | None = typer.Option(None, "--out", help="Results directory (default: <run>/eval for a run's "
                                          "export, else runs/eval/<model name>)."),
          kv_cache_gb: float = typer.Option(1.0, "--kv-cache-gb",
                                            help="KV cache on CPU (as rollout.kv_cache_gb).")) -> None:
    """Greedy accuracy, mean@K, pass@k and maj@K of a model on one or more sets, per set and data_source,
    through the generator's vLLM engine and the reward functions; writes eval.json, eval.md, eval_samples.jsonl."""
    def go() -> None:
        from asyncrl.log import setup_logging
        setup_logging("eval", "INFO")
        from cli.evaluate import EvalOptions, main
        main(EvalOptions(model=model, data=data, n=n, temperature=temperature, top_p=top_p, ks=k or None,
                         reward=reward, max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens,
                         dtype=dtype, seed=seed, limit=limit, out=out, kv_cache_gb=kv_cache_gb))
    _run("eval", go)


@app.command()
def keys(out: Path = typer.Option(..., "--out", help="Directory for the CURVE key files.")) -> None:
    """Create ZeroMQ CURVE keys for transport.curve_dir (server + client pair, authorized/ folder)."""
    def go() -> None:
        from asyncrl.curve import create_keys
        d = create_keys(out)
        typer.echo(f"wrote CURVE keys to {d}: binding hosts need server.key_secret and authorized/, "
                   f"connecting hosts client.key_secret and server.key; set transport.curve_dir = \"{d}\"")
    _run("keys", go)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory (asyncrl up --run-dir)."),
           out: Path | None = typer.Option(None, "--out", help="Output folder (default RUN_DIR/report).")) -> None:
    """PNG figures and one self-contained HTML page about a run (curves, staleness, throughput, weight
    syncs, a timeline of generation vs training); prints the page's path. No metrics.jsonl: exit 2."""
    def go() -> None:
        from cli.report import ReportError, build_report
        try:
            page = build_report(run_dir, out)
        except ReportError as e:
            typer.echo(f"asyncrl report: {e}", err=True)
            raise typer.Exit(2) from None
        typer.echo(str(page))
    _run("report", go)


@app.command()
def samples(run_dir: Path = typer.Argument(..., help="A run directory (asyncrl up --run-dir)."),
            step: int | None = typer.Option(None, "--step", help="The dump of this step (default: the newest)."),
            worst: int | None = typer.Option(None, "--worst", help="Only the K lowest-reward samples."),
            split: str = typer.Option("train", "--split", help="train, or val (the validation samples)."),
            limit: int | None = typer.Option(None, "--limit", help="At most this many samples."),
            max_chars: int = typer.Option(600, "--max-chars", help="Clip prompts (their end) and responses.")) -> None:
    """Print a run's sample dumps (<run dir>/samples/, every logging.samples_every steps and each
    validation): prompt, response, reward, reward error, policy version, staleness, and the
    learner-minus-behaviour log-prob gap of each sample."""
    def go() -> None:
        from asyncrl.config import ConfigError
        if split not in ("train", "val"):
            raise ConfigError(f"--split {split!r}: choose train or val")
        from cli.samples import show
        show(run_dir, split, step, worst, limit, max_chars)
    _run("samples", go)


BENCHMARKS = {"packing": "bench_packing", "memory": "bench_memory", "transport": "bench_transport",
              "async": "bench_async", "weight-sync": "bench_weight_sync", "trl": "bench_trl",
              "scaling": "bench_scaling", "lora": "bench_lora", "peak": "bench_peak",
              "time-to-accuracy": "bench_time_to_accuracy", "learner": "bench_learner"}


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context,
          suite: str = typer.Argument(..., help=f"One of {', '.join(BENCHMARKS)}, or all."),
          smoke: bool = typer.Option(False, "--smoke", help="Seconds-long versions on a tiny model (CI)."),
          out: Path = typer.Option(Path("runs/bench"), "--out", help="Results directory (markdown + JSON).")) -> None:
    """Run benchmark SUITE; each writes <out>/<name>.md and .json (ratios measured side by side).
    Other options go to the script, e.g. `asyncrl bench async --seconds 120`."""
    extra = list(ctx.args)
    import subprocess

    names = list(BENCHMARKS) if suite == "all" else [suite]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        typer.echo(f"asyncrl bench: unknown suite {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}, all", err=True)
        raise typer.Exit(2)
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    failed = []
    for name in names:
        script = root / f"{BENCHMARKS[name]}.py"
        if not script.is_file():
            typer.echo(f"asyncrl bench: {script} is missing", err=True)
            raise typer.Exit(2)
        typer.echo(f"== {name} ==")
        argv = [sys.executable, str(script), "--out", str(out)] + (["--smoke"] if smoke else []) + list(extra or [])
        if subprocess.run(argv).returncode != 0:
            failed.append(name)
    if failed:
        typer.echo(f"asyncrl bench: failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def chaos(ctx: typer.Context,
          out: Path = typer.Option(Path("runs/bench"), "--out", help="Results directory (markdown + JSON).")) -> None:
    """Chaos drill on the tiny config: kill -9 the generator, reward worker and learner at random
    steps (resuming after the learner), then check every prompt was trained exactly once or is
    accounted for. Options go to benchmarks/chaos.py (see its --help)."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "chaos.py"
    raise typer.Exit(subprocess.run([sys.executable, str(script), "--out", str(out)] + list(ctx.args)).returncode)


if __name__ == "__main__":
    app()
