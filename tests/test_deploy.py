"""`asyncrl deploy slurm|k8s`: what the renderers write (no cluster needed).

The sbatch script passes `bash -n` and, run with stand-ins for `scontrol` and `srun`, starts
one step per process with addresses filled in from the allocation's host names; the manifests
parse and carry the fields Kubernetes requires; options that cannot work exit 2 naming them.
"""

from __future__ import annotations

import os
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from asyncrl.config import load_config, validate_config
from cli.deploy.commands import app
from cli.deploy.k8s import CURVE_DIR
from cli.deploy.layout import place
from cli.deploy.toml_text import config_toml

ROOT = Path(__file__).resolve().parents[1]
RUN = """
[model]
path = "models/policy"
[data]
train = "data/train.parquet"
[rollout]
num_generators = 3
tensor_parallel_size = 2
[reward]
num_workers = 2
[learner]
world_size = 8
nnodes = 2
rdzv_endpoint = "localhost:29400"
prompts_per_step = 8
[transport]
rewards = ["127.0.0.1:5560", "127.0.0.1:5561"]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(RUN)
    return path


def _deploy(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _render_slurm(config: Path, tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / "run.sbatch"
    code, output = _deploy("slurm", str(config), "--gpus-per-node", "4", "--partition", "gpu", "--time",
                           "2-00:00:00", "--curve-dir", str(tmp_path / "keys"), "--out", str(out), *extra)
    assert code == 0, output
    return out


def test_slurm_script_is_valid_bash_with_one_step_per_process(config: Path, tmp_path: Path) -> None:
    script = _render_slurm(config, tmp_path, "--set", "learner.lr=2e-6")
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for line in ("#SBATCH --nodes=4", "#SBATCH --gpus-per-node=4", "#SBATCH --partition=gpu",
                 "#SBATCH --time=2-00:00:00", "#SBATCH --exclusive"):
        assert line in text
    assert text.count("srun ") == 1 + 3 + 2
    assert "--nodes=2 --ntasks=2 --ntasks-per-node=1" in text  # the learner: one task per node
    assert "--node-rank \"$SLURM_PROCID\"" in text and "CUDA_VISIBLE_DEVICES=0,1,2,3" in text
    for i in range(3):
        assert f'rollout "$CONFIG" --index {i}' in text
    for j in range(2):
        assert f'reward "$CONFIG" --index {j}' in text
    assert '"transport.dispatch=\\"${NODES[0]}:5555\\""' in text
    assert '"learner.rdzv_endpoint=\\"${NODES[0]}:29400\\""' in text
    assert "--set learner.lr=2e-6" in text


def test_slurm_script_fills_addresses_from_the_allocation(config: Path, tmp_path: Path) -> None:
    """Run the script with stand-ins for scontrol and srun: every step gets the real host names."""
    script = _render_slurm(config, tmp_path)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "server.key_secret").write_text("")  # keys exist: the script must not create them
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-a\\ngpu-b\\ngpu-c\\ngpu-d\\n'\n")
    # Each call's argv, one per line, moved into place whole (steps other than the learner's may
    # still be writing when the script exits: on a cluster, the job's end would stop them).
    (bin_dir / "srun").write_text(f"#!/bin/sh\nf=$(mktemp {tmp_path}/.XXXXXX)\nprintf '%s\\n' \"$@\" > \"$f\"\n"
                                  f"mv \"$f\" {calls}/\n")
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-[a-d]"}
    subprocess.run(["bash", str(script)], env=env, check=True, timeout=60)
    deadline = time.monotonic() + 30
    while len(list(calls.iterdir())) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    steps = [f.read_text().splitlines() for f in calls.iterdir()]
    assert len(steps) == 6
    learner = next(s for s in steps if "learner" in s)
    assert "--nodelist=gpu-a,gpu-b" in learner and "--node-rank \"$SLURM_PROCID\"" in " ".join(learner)
    for argv in steps:
        assert 'transport.dispatch="gpu-a:5555"' in argv and 'weight_sync.address="gpu-a:5570"' in argv
        assert 'transport.rewards=["gpu-c:5560", "gpu-d:5561"]' in argv
        assert f'transport.curve_dir="{keys}"' in argv and 'learner.rdzv_endpoint="gpu-a:29400"' in argv
    reward1 = next(s for s in steps if "reward" in s and s[s.index("--index") + 1] == "1")
    assert "--nodelist=gpu-d" in reward1


def test_slurm_layout_packs_gpus_first_fit(config: Path) -> None:
    cfg = load_config(config, ["reward.type=\"model\"", "reward.model_path=\"models/rm\""])
    used, steps = place(cfg, gpus_per_node=8)
    where = {s.name: (s.nodes, s.gpus) for s in steps}
    assert used == 2  # learner 4+4 GPUs on nodes 0-1; their spare GPUs take the generators and reward models
    assert where["learner"] == ([0, 1], [0, 1, 2, 3])
    assert where["rollout-0"] == ([0], [4, 5]) and where["rollout-1"] == ([0], [6, 7])
    assert where["rollout-2"] == ([1], [4, 5]) and where["reward-0"] == ([1], [6])
    assert where["reward-1"] == ([1], [7])


def test_k8s_manifests_have_the_fields_kubernetes_requires(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "asyncrl.yaml"
    code, output = _deploy("k8s", str(config), "--image", "registry.example/asyncrl:0.1", "--namespace", "rl",
                           "--volume-claim", "asyncrl-work", "--out", str(out))
    assert code == 0, output
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    kinds = [(d["apiVersion"], d["kind"]) for d in docs]
    assert kinds.count(("v1", "ConfigMap")) == 1
    assert kinds.count(("v1", "Service")) == kinds.count(("apps/v1", "StatefulSet")) == 3
    for d in docs:
        assert d["metadata"]["name"] and len(d["metadata"]["name"]) <= 63 and d["metadata"]["namespace"] == "rl"
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    run = validate_config(tomllib.loads(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["run.toml"]))
    assert run.transport.dispatch == "asyncrl-learner-0.asyncrl-learner:5555"
    assert run.transport.rewards == ["asyncrl-reward-0.asyncrl-reward:5560", "asyncrl-reward-1.asyncrl-reward:5561"]
    assert run.learner.rdzv_endpoint == "asyncrl-learner-0.asyncrl-learner:29400"
    assert str(run.transport.curve_dir) == CURVE_DIR and run.transport.bind_host == "0.0.0.0"
    replicas, gpus = {}, {}
    for sts in (d for d in docs if d["kind"] == "StatefulSet"):
        spec, name = sts["spec"], sts["metadata"]["name"]
        service = services[spec["serviceName"]]
        assert service["spec"]["clusterIP"] == "None"
        assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
        assert service["spec"]["selector"] == spec["template"]["metadata"]["labels"]
        pod = spec["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        assert container["name"] and container["image"] == "registry.example/asyncrl:0.1"
        assert container["command"] == ["sh", "-c"]
        subprocess.run(["sh", "-n", "-c", container["args"][0]], check=True)
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert set(mounts.values()) <= set(volumes)
        assert volumes[mounts["/etc/asyncrl"]]["configMap"]["name"] == "asyncrl-config"
        assert volumes[mounts[CURVE_DIR]]["secret"]["secretName"] == "asyncrl-curve"
        assert volumes[mounts["/workspace"]]["persistentVolumeClaim"]["claimName"] == "asyncrl-work"
        replicas[name] = spec["replicas"]
        gpus[name] = container["resources"].get("limits", {}).get("nvidia.com/gpu", 0)
        assert "/etc/asyncrl/run.toml" in container["args"][0]
    assert replicas == {"asyncrl-learner": 2, "asyncrl-rollout": 3, "asyncrl-reward": 2}
    assert gpus == {"asyncrl-learner": 4, "asyncrl-rollout": 2, "asyncrl-reward": 0}
    learner = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "asyncrl-learner")
    assert '--node-rank "${HOSTNAME##*-}"' in learner["spec"]["template"]["spec"]["containers"][0]["args"][0]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_config_toml_reads_back_equal(path: Path) -> None:
    cfg = load_config(path)
    assert validate_config(tomllib.loads(config_toml(cfg))) == cfg


@pytest.mark.parametrize("args, named", [
    (["slurm", "--gpus-per-node", "4", "--nodes", "3"], "--nodes 3 is fewer than the 4"),
    (["slurm", "--gpus-per-node", "4", "--nodes", "6"], "--nodes 6: this run fills 4"),
    (["slurm", "--gpus-per-node", "2"], "--gpus-per-node 2 is fewer than the learner's 4"),
    (["slurm", "--gpus-per-node", "4", "--set", "rollout.tensor_parallel_size=8"],
     "rollout.tensor_parallel_size=8"),
    (["slurm", "--set", "placement.device=\"cpu\"", "--gpus-per-node", "4"], "--gpus-per-node 4 does not apply"),
    (["slurm", "--set", "transport.dispatch=\"h:1\""], "--set transport.dispatch: does not apply"),
    (["slurm", "--learner-nodes", "3"], "learner.world_size=8 is not a multiple of learner.nnodes=3"),
    (["slurm", "--time", "tomorrow"], "--time 'tomorrow'"),
    (["slurm", "--set", "placement.generators=[\"0\", \"1\", \"2\"]"], "placement.generators: per-host"),
    (["k8s", "--image", "x", "--name", "Asyncrl"], "--name 'Asyncrl'"),
    (["k8s", "--image", "x", "--set", "transport.curve_dir=\"/k\""], "--set transport.curve_dir"),
    (["k8s", "--image", "x", "--set", "learner.rdzv_endpoint=\"h:5555\""], "--set learner.rdzv_endpoint"),
])
def test_options_that_cannot_work_exit_2_naming_them(config: Path, tmp_path: Path, args: list[str],
                                                     named: str) -> None:
    out = tmp_path / "never"
    code, output = _deploy(args[0], str(config), *args[1:], "--out", str(out))
    assert code == 2, output
    assert "asyncrl deploy: " in output and named in output
    assert not out.exists()


def test_two_sockets_on_one_port_of_one_node_exit_2(tmp_path: Path) -> None:
    """With 16 GPUs a node, reward worker 0 shares learner node 0, where 5555 is transport.dispatch."""
    config = tmp_path / "run.toml"
    config.write_text(RUN.replace('"127.0.0.1:5560"', '"127.0.0.1:5555"'))
    code, output = _deploy("slurm", str(config), "--gpus-per-node", "16")
    assert code == 2 and "transport.rewards[0]: port 5555 is also transport.dispatch's" in output


def test_deploy_is_a_subcommand_of_asyncrl(config: Path) -> None:
    from cli.main import app as asyncrl

    result = CliRunner().invoke(asyncrl, ["deploy", "k8s", str(config), "--image", "x", "--name", "rl"])
    assert result.exit_code == 0, result.output
    assert "name: rl-learner" in result.output
