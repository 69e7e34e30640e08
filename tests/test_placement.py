"""Placement: which GPUs or cores each process gets, refusals that name the key, and the dry run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from asyncrl.config import ConfigError, validate_config
from asyncrl.placement import PlacementError, child_env, make_plan, parse_ids
from asyncrl.procplan import check_model_fits, torchrun_argv

GPUS8 = [str(i) for i in range(8)]


def _cfg(**sections: dict) -> object:
    data = {"model": {"path": "m"}, "data": {"train": "t"}}
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    return validate_config(data)


def test_parse_ids() -> None:
    assert parse_ids("0,1", "k") == [["0", "1"]]
    assert parse_ids("0-2|5", "k") == [["0", "1", "2"], ["5"]]
    with pytest.raises(PlacementError, match="k: 'a-b'"):
        parse_ids("a-b", "k")


def test_gpu_plan_automatic() -> None:
    cfg = _cfg(learner={"world_size": 2, "prompts_per_step": 4},
               rollout={"num_generators": 2, "tensor_parallel_size": 2})
    plan = make_plan(cfg, gpus=["3", "4", "5", "6", "7", "9"])
    assert plan.kind == "cuda"
    assert plan.env["learner"] == {"CUDA_VISIBLE_DEVICES": "3,4"}
    assert plan.env["rollout-0"] == {"CUDA_VISIBLE_DEVICES": "5,6"}
    assert plan.env["rollout-1"] == {"CUDA_VISIBLE_DEVICES": "7,9"}
    assert plan.env["reward-0"] == {"CUDA_VISIBLE_DEVICES": ""}  # function rewards: no GPU


def test_gpu_plan_too_many_devices_names_the_need() -> None:
    cfg = _cfg(learner={"world_size": 4}, rollout={"num_generators": 3, "tensor_parallel_size": 2})
    with pytest.raises(PlacementError, match=r"needs 10 GPU\(s\).*but 8 are visible"):
        make_plan(cfg, gpus=GPUS8)


def test_gpu_overlap_only_when_declared() -> None:
    base = {"learner": "0,1", "generators": ["1,2"]}
    cfg = _cfg(learner={"world_size": 2}, rollout={"tensor_parallel_size": 2}, placement=base)
    with pytest.raises(PlacementError, match=r"placement.generators\[0\]: GPU 1 is also given to learner"):
        make_plan(cfg, gpus=GPUS8)
    shared = _cfg(learner={"world_size": 2}, rollout={"tensor_parallel_size": 2},
                  placement={**base, "allow_overlap": True})
    assert make_plan(shared, gpus=GPUS8).env["rollout-0"] == {"CUDA_VISIBLE_DEVICES": "1,2"}


def test_gpu_explicit_wrong_count_and_invisible() -> None:
    cfg = _cfg(rollout={"tensor_parallel_size": 2}, placement={"generators": ["4"]})
    with pytest.raises(PlacementError, match=r"placement.generators\[0\]: '4' names 1 GPU\(s\); rollout-0 needs 2"):
        make_plan(cfg, gpus=GPUS8)
    cfg = _cfg(placement={"learner": "9"})
    with pytest.raises(PlacementError, match="placement.learner: GPU 9 is not visible"):
        make_plan(cfg, gpus=GPUS8)


def test_cpu_plan_tp_default_on_two_cores() -> None:
    """`--set rollout.tensor_parallel_size=2` alone must work on a 2-core machine."""
    plan = make_plan(_cfg(rollout={"tensor_parallel_size": 2}), gpus=[], cpus=["0", "1"])
    assert plan.kind == "cpu"
    assert plan.env["rollout-0"] == {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    assert plan.env["learner"] == {}  # shares the cores (the only way on 2)
    one = make_plan(_cfg(), gpus=[], cpus=["0", "1"])
    assert one.env["rollout-0"] == {}  # TP 1, nothing said: vLLM's own binding, as before


def test_cpu_plan_slices_and_explicit_sets() -> None:
    cfg = _cfg(rollout={"num_generators": 2, "tensor_parallel_size": 2})
    plan = make_plan(cfg, gpus=[], cpus=[str(i) for i in range(8)])
    assert plan.env["rollout-0"]["VLLM_CPU_OMP_THREADS_BIND"] == "0-1|2-3"
    assert plan.env["rollout-1"]["VLLM_CPU_OMP_THREADS_BIND"] == "4-5|6-7"
    cfg = _cfg(rollout={"tensor_parallel_size": 2},
               placement={"generators": ["2|3"], "learner": "0-1", "learner_threads": 2, "generator_threads": 1})
    plan = make_plan(cfg, gpus=[], cpus=["0", "1", "2", "3"])
    assert plan.env["rollout-0"] == {"VLLM_CPU_OMP_THREADS_BIND": "2|3", "OMP_NUM_THREADS": "1"}
    assert plan.env["learner"] == {"ASYNCRL_CPU_AFFINITY": "0-1", "ASYNCRL_LEARNER_THREADS": "2"}
    bad = _cfg(rollout={"tensor_parallel_size": 2}, placement={"generators": ["0|1|2"]})
    with pytest.raises(PlacementError, match=r"3 core set\(s\).*tensor_parallel_size=2"):
        make_plan(bad, gpus=[], cpus=["0", "1", "2"])
    with pytest.raises(PlacementError, match="CPU 7 is not available"):
        make_plan(_cfg(placement={"learner": "7"}), gpus=[], cpus=["0", "1"])
    with pytest.raises(PlacementError, match="needs at least 4 CPU cores"):
        make_plan(_cfg(rollout={"tensor_parallel_size": 4}), gpus=[], cpus=["0", "1"])


def test_child_env_drops_inherited_placement() -> None:
    env = child_env({"VLLM_CPU_OMP_THREADS_BIND": "0|1"},
                    {"PATH": "/bin", "VLLM_CPU_OMP_THREADS_BIND": "5", "ASYNCRL_CPU_AFFINITY": "3"})
    assert env == {"PATH": "/bin", "VLLM_CPU_OMP_THREADS_BIND": "0|1", "ASYNCRL_PLACEMENT_APPLIED": "1"}


def test_config_errors_name_keys() -> None:
    with pytest.raises(ConfigError, match="rollout.cpu_bind moved to placement.generators"):
        _cfg(rollout={"cpu_bind": "0"})
    with pytest.raises(ConfigError, match="learner.nnodes=2 needs learner.rdzv_endpoint"):
        _cfg(learner={"world_size": 2, "nnodes": 2})
    with pytest.raises(ConfigError, match="world_size=3 is not a multiple of learner.nnodes=2"):
        _cfg(learner={"world_size": 3, "nnodes": 2, "rdzv_endpoint": "h:1"})
    with pytest.raises(ConfigError, match=r"placement.generators has 1 entr\(ies\) but 2"):
        _cfg(rollout={"num_generators": 2}, placement={"generators": ["0"]})


def test_torchrun_argv_multi_node() -> None:
    cfg = _cfg(learner={"world_size": 4, "nnodes": 2, "rdzv_endpoint": "192.0.2.11:29400",
                        "rendezvous_timeout_s": 60})
    argv = torchrun_argv(cfg, Path("c.toml"), ["run.seed=1"], node_rank=1)
    joined = " ".join(argv)
    assert "--nproc-per-node 2" in joined and "--nnodes 2 --node-rank 1" in joined
    assert "--rdzv-backend static --rdzv-endpoint 192.0.2.11:29400 --rdzv-conf timeout=60" in joined
    assert argv[-6:] == ["-m", "cli.main", "learner", "c.toml", "--set", "run.seed=1"]
    with pytest.raises(ConfigError, match="--node-rank 2 out of range"):
        torchrun_argv(cfg, Path("c.toml"), [], node_rank=2)
    single = torchrun_argv(_cfg(learner={"world_size": 2}), Path("c.toml"), [], 0)
    assert "--standalone" in single


def test_tp_must_divide_heads(tiny_model_dir: Path) -> None:
    cfg = validate_config({"model": {"path": str(tiny_model_dir)}, "data": {"train": "t"},
                           "rollout": {"tensor_parallel_size": 3}})
    with pytest.raises(ConfigError, match="tensor_parallel_size=3 does not divide the model's 2 attention heads"):
        check_model_fits(cfg)
    check_model_fits(validate_config({"model": {"path": str(tiny_model_dir)}, "data": {"train": "t"},
                                      "rollout": {"tensor_parallel_size": 2}}))  # 1 KV head: replicated


def test_dry_run_prints_plan_and_refuses_bad_placement(tiny_model_dir: Path, tmp_path: Path) -> None:
    from cli.data.arith import write_arith

    write_arith(tmp_path / "arith", n_train=8, n_test=4, seed=0)
    base = [sys.executable, "-m", "cli.main", "up", "configs/tiny_cpu.toml", "--dry-run",
            "--set", f"model.path={tiny_model_dir}", "--set", f"data.train={tmp_path / 'arith/train.parquet'}",
            "--set", f"data.test={tmp_path / 'arith/test.parquet'}"]
    repo = Path(__file__).resolve().parents[1]
    ok = subprocess.run(base + ["--set", "rollout.tensor_parallel_size=2"], cwd=repo, capture_output=True,
                        text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert ok.returncode == 0, ok.stderr
    assert "rollout-0: CPU " in ok.stdout and "cli.main learner configs/tiny_cpu.toml" in ok.stdout
    assert "binds dispatch 127.0.0.1:5555" in ok.stdout
    bad = subprocess.run(base + ["--set", "placement.device=cuda"], cwd=repo, capture_output=True, text=True,
                         timeout=120, env={"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert bad.returncode == 2 and "placement.device = 'cuda' but no GPU is visible" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_process_started_alone_takes_its_own_devices() -> None:
    """By hand (one process per host), an automatic plan gives that process the first devices it sees."""
    cfg = _cfg(learner={"world_size": 4, "nnodes": 2, "rdzv_endpoint": "h:1"},
               rollout={"num_generators": 4, "tensor_parallel_size": 2})
    assert make_plan(cfg, gpus=["0", "1"], only="rollout-3").env == {"rollout-3": {"CUDA_VISIBLE_DEVICES": "0,1"}}
    assert make_plan(cfg, gpus=["0", "1"], only="learner").env == {"learner": {"CUDA_VISIBLE_DEVICES": "0,1"}}
    with pytest.raises(PlacementError):
        make_plan(cfg, gpus=["0", "1"])  # the whole run does not fit one such host
    cpu = make_plan(cfg, gpus=[], cpus=["0", "1"], only="rollout-3")
    assert cpu.env["rollout-3"] == {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}


def test_learner_node_without_node_zero_exits_naming_it(tmp_path: Path) -> None:
    """A rendezvous endpoint nobody answers: a bounded wait, then exit 1 naming it, no traceback."""
    from tests.conftest import free_port

    port = free_port()
    res = subprocess.run([sys.executable, "-m", "cli.main", "learner", "configs/tiny_cpu.toml", "--node-rank", "1",
                          "--set", "learner.world_size=2", "--set", "learner.nnodes=2",
                          "--set", f"learner.rdzv_endpoint=127.0.0.1:{port}",
                          "--set", "learner.rendezvous_timeout_s=2"],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    assert f"rendezvous endpoint 127.0.0.1:{port} did not answer within 2s" in res.stderr
    assert "Traceback" not in res.stderr
