"""Config validation: every shipped TOML loads; bad input names the key path and exits 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from asyncrl.config import ConfigError, load_config, validate_config
from tests.e2e import REPO

BASE = {"model": {"path": "m"}, "data": {"train": "t.parquet"}}


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.run.max_steps >= 1


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*/*.toml")), ids=lambda p: p.parent.name + "/" + p.name)
def test_every_shipped_supervised_config_loads(path: Path) -> None:
    from asyncrl.train_config import RMConfig, SFTConfig

    cfg = load_config(path, schema={"sft": SFTConfig, "rm": RMConfig}[path.parent.name])
    assert cfg.run.max_steps >= 1


def _err(data: dict) -> str:
    with pytest.raises(ConfigError) as e:
        validate_config(data, source="x.toml")
    return str(e.value)


def test_unknown_key_names_the_path() -> None:
    assert "x.toml: learner.lrr: unknown key" in _err({**BASE, "learner": {"lrr": 1.0}})
    assert "bogus: unknown key" in _err({**BASE, "bogus": {}})


def test_wrong_type_names_the_path() -> None:
    assert "sampling.n" in _err({**BASE, "sampling": {"n": "eight"}})
    assert "model: Field required" in _err({"data": {"train": "t"}})


def test_impossible_combinations() -> None:
    assert "max_staleness" in _err({**BASE, "learner": {"max_staleness": 0, "sync_every": 3}})
    assert "transport.rewards" in _err({**BASE, "reward": {"num_workers": 2}})
    assert "host:port" in _err({**BASE, "transport": {"dispatch": "nohostport"}})


def test_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[model]\npath = "m"\n[data]\ntrain = "t.parquet"\n')
    cfg = load_config(p, ["learner.lr=3e-4", "run.dir=/tmp/x y", 'transport.rewards=["h:1"]'])
    assert cfg.learner.lr == 3e-4 and str(cfg.run.dir) == "/tmp/x y" and cfg.transport.rewards == ["h:1"]
    with pytest.raises(ConfigError, match="learner.nope"):
        load_config(p, ["learner.nope=1"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('[model]\npath = "m"\n[data]\ntrain = "t.parquet"\n[learner]\nlr = "fast"\n')
    res = _cli("up", str(p))
    assert res.returncode == 2
    assert "learner.lr" in res.stderr and "Traceback" not in res.stderr


def test_cli_missing_data_column_exits_2(tmp_path: Path, tiny_model_dir: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["hi"], "data_source": ["arith"]}), data)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[model]\npath = "{tiny_model_dir}"\n[data]\ntrain = "{data}"\n')
    res = _cli("up", str(cfg))
    assert res.returncode == 2
    assert "data.train" in res.stderr and "reward_model" in res.stderr and str(data) in res.stderr
    assert "Traceback" not in res.stderr


def test_help_for_every_command() -> None:
    for cmd in ([], ["up"], ["learner"], ["rollout"], ["reward"], ["data"], ["model"],
                ["data", "arith"], ["data", "gsm8k"], ["data", "math"], ["data", "custom"], ["data", "inspect"],
                ["model", "tiny"], ["model", "import-gguf"]):
        res = _cli(*cmd, "--help")
        assert res.returncode == 0 and "Usage" in res.stdout, (cmd, res.stderr)


def test_auto_dtype_is_bf16_only_where_bf16_is_fast() -> None:
    from asyncrl.hardware import autocast_bf16_ok, fast_bf16, resolve_dtype

    assert resolve_dtype("float16") == "float16" and resolve_dtype("float32") == "float32"
    assert resolve_dtype("auto") == ("bfloat16" if fast_bf16() else "float32")
    assert autocast_bf16_ok(True, "cpu") == fast_bf16() and not autocast_bf16_ok(False, "cpu")
    assert load_config(REPO / "configs" / "quickstart.toml").rollout.dtype == "auto"


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_rely_on_no_deprecated_meaning(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="asyncrl.config"):
        load_config(path)
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_correction_conventions_warn_until_explicit(caplog: pytest.LogCaptureFixture) -> None:
    def warnings(**algo) -> list[str]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="asyncrl.config"):
            cfg = validate_config({**BASE, "algorithm": algo})
        assert cfg.algorithm.mis_ratio == algo.get("mis_ratio", "pi_over_mu")  # the default is unchanged
        return [r.getMessage() for r in caplog.records]

    msgs = warnings(correction="mis", is_lower=0.5, is_upper=5.0)
    assert len(msgs) == 1 and "algorithm.mis_ratio" in msgs[0] and "mu/pi" in msgs[0]
    assert warnings(correction="seq_mis", is_lower=0.25, is_upper=2.0)
    assert not warnings(correction="mis", is_lower=0.25, is_upper=4.0)  # reciprocal: both meanings agree
    assert not warnings(correction="mis", is_lower=0.5, is_upper=5.0, mis_ratio="mu_over_pi")
    assert not warnings(correction="icepop", is_lower=0.5, is_upper=5.0)  # always pi/mu, as veRL's IcePop
    msgs = warnings(correction="decoupled")
    assert len(msgs) == 1 and "algorithm.decoupled_filter" in msgs[0]
    assert not warnings(correction="decoupled", decoupled_filter="zero")
    # children get the dumped config, every key set: no second warning
    assert not warnings(**validate_config({**BASE, "algorithm": {"correction": "decoupled"}}).algorithm.model_dump())


def test_algorithm_keys_for_verl_parity() -> None:
    cfg = validate_config({**BASE, "algorithm": {"kl_loss_type": "k3+", "kl_reward_type": "low_var_kl+",
                                                 "kl_reward_mean": "sequence", "correction": "seq_icepop"}})
    assert cfg.algorithm.kl_loss_type == "k3+" and cfg.algorithm.kl_reward_mean == "sequence"
    assert "algorithm.is_lower=3.0 exceeds algorithm.is_upper=2.0" in _err({**BASE, "algorithm": {"is_lower": 3.0}})
    assert "algorithm.mis_ratio" in _err({**BASE, "algorithm": {"mis_ratio": "mu/pi"}})
    assert "algorithm.kl_loss_type" in _err({**BASE, "algorithm": {"kl_loss_type": "k4+"}})


def test_moved_keys_are_deprecated_aliases(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A key that moved to a shared section still works from a file, an extended file, --set and a dict,
    with one warning line naming the old and the new key; code reading the old attribute gets the new value."""
    base = tmp_path / "base.toml"
    base.write_text('[model]\npath = "m"\n[data]\ntrain = "t.parquet"\n[rollout]\nn = 6\n'
                    '[learner]\nsync_timeout_s = 50\n[transport]\nweight_sync = "h:9"\n')
    top = tmp_path / "top.toml"
    top.write_text('extends = "base.toml"\n[sampling]\nn = 3\n')
    with caplog.at_level("WARNING", logger="asyncrl.config"):
        cfg = load_config(top, ["rollout.heartbeat_s=0.5", "learner.generator_timeout_s=7"])
    assert (cfg.sampling.n, cfg.weight_sync.timeout_s, cfg.weight_sync.address) == (3, 50.0, "h:9")
    assert (cfg.liveness.heartbeat_s, cfg.liveness.generator_timeout_s) == (0.5, 7.0)
    msgs = [r.getMessage() for r in caplog.records]
    assert f"{base}: rollout.n is deprecated: use sampling.n" in msgs
    assert "--set: learner.generator_timeout_s is deprecated: use liveness.generator_timeout_s" in msgs
    assert len(msgs) == 5
    with pytest.warns(DeprecationWarning, match="learner.sync_timeout_s .* weight_sync.timeout_s"):
        assert cfg.learner.sync_timeout_s == 50.0
    with pytest.warns(DeprecationWarning):
        cfg.learner.generator_timeout_s = 1.0
    assert cfg.liveness.generator_timeout_s == 1.0
    cfg = validate_config({**BASE, "rollout": {"temperature": 0.5}, "learner": {"bucket_mb": 8}})
    assert cfg.sampling.temperature == 0.5 and cfg.weight_sync.bucket_mb == 8
    assert "both rollout.n and sampling.n" in _err({**BASE, "rollout": {"n": 2}, "sampling": {"n": 2}})
    assert "placement.generator_threads" in _err({**BASE, "rollout": {"omp_threads": 2}})  # moved earlier: refused


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_use_no_deprecated_key(path: Path) -> None:
    import tomllib

    from asyncrl.config_moved import ALIASES

    data = tomllib.loads(path.read_text())
    used = {f"{s}.{k}" for s, keys in data.items() if isinstance(keys, dict) for k in keys}
    assert not used & set(ALIASES), used & set(ALIASES)
