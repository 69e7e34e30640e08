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


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*/*.toml")),
                         ids=lambda p: p.parent.name + "/" + p.name)
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


def test_cli_missing_model_and_data_say_the_command_that_makes_them(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[model]\npath = "{tmp_path}/models/tiny"\n[data]\ntrain = "{tmp_path}/data/arith/train.parquet"\n')
    res = _cli("up", str(cfg))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "model.path" in res.stderr and f"asyncrl model tiny --out {tmp_path}/models/tiny" in res.stderr
    res = _cli("up", str(cfg), "--set", f"model.path={tiny_model_dir}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "data.train" in res.stderr and f"asyncrl data arith --out {tmp_path}/data/arith" in res.stderr


def test_help_for_every_command() -> None:
    for cmd in ([], ["up"], ["learner"], ["rollout"], ["reward"], ["data"], ["model"],
                ["data", "arith"], ["data", "gsm8k"], ["data", "math"], ["data", "custom"], ["data", "inspect"],
                ["model", "tiny"], ["model", "import-gguf"]):
        res = _cli(*cmd, "--help")
        assert res.returncode == 0 and "Usage" in res.stdout, (cmd, res.stderr)


def test_auto_dtype_is_bf16_only_where_bf16_is_fast() -> None:
    from asyncrl.hardware import autocast_bf16_ok, fast_bf16, mixed_precision_ok, resolve_dtype

    assert resolve_dtype("float16") == "float16" and resolve_dtype("float32") == "float32"
    assert resolve_dtype("auto") == ("bfloat16" if fast_bf16() else "float32")
    assert autocast_bf16_ok(True, "cpu") == fast_bf16() and not autocast_bf16_ok(False, "cpu")
    assert mixed_precision_ok(True, "cpu") == fast_bf16() and not mixed_precision_ok(False, "cpu")
    assert load_config(REPO / "configs" / "quickstart.toml").rollout.dtype == "auto"


def test_bf16_options_fall_back_to_fp32_where_bf16_is_slow(monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """On a CPU without native bf16 both bf16 options compute in fp32 and say which key was ignored."""
    from asyncrl import hardware

    monkeypatch.setattr(hardware, "fast_bf16", lambda: False)
    hardware.bf16_compute_ok.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="asyncrl.hardware"):
            assert not hardware.mixed_precision_ok(True, "cpu") and not hardware.autocast_bf16_ok(True, "cpu")
            assert hardware.mixed_precision_ok(True, "cuda")
        assert [m for m in caplog.messages if "mixed_precision is on" in m]
        assert [m for m in caplog.messages if "autocast_bf16 is on" in m]
    finally:
        hardware.bf16_compute_ok.cache_clear()


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
    # the keys in effect (what resolved/learner.json shows) load again, every one set: no warning
    assert not warnings(**validate_config({**BASE, "algorithm": {"correction": "decoupled"}}).algorithm.applicable())


def test_algorithm_keys_for_verl_parity() -> None:
    cfg = validate_config({**BASE, "algorithm": {"kl_loss_coef": 0.1, "kl_loss_type": "k3+", "kl_in_reward": True,
                                                 "kl_reward_type": "low_var_kl+", "kl_reward_mean": "sequence",
                                                 "correction": "seq_icepop"}})
    assert cfg.algorithm.kl_loss_type == "k3+" and cfg.algorithm.kl_reward_mean == "sequence"
    assert "algorithm.is_lower=3.0 exceeds algorithm.is_upper=2.0" in _err(
        {**BASE, "algorithm": {"correction": "mis", "is_lower": 3.0}})
    assert "algorithm.mis_ratio" in _err({**BASE, "algorithm": {"correction": "mis", "mis_ratio": "mu/pi"}})
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


@pytest.mark.parametrize("algo, key, why", [
    ({"critic_lr": 1e-3}, "critic_lr", 'advantage = "gae" (here advantage = "grpo")'),
    ({"advantage": "rloo", "value_clip": 0.2}, "value_clip", 'advantage = "gae" (here advantage = "rloo")'),
    ({"lam": 0.9}, "lam", 'advantage = "gae"'),
    ({"advantage": "rloo", "norm_adv_by_std": False}, "norm_adv_by_std", 'advantage = "grpo"'),
    ({"gamma": 0.9}, "gamma", 'advantage = "reinforce_pp" or "gae"'),
    ({"loss": "gspo", "clip_c": 3.0}, "clip_c", 'loss = "ppo"'),
    ({"loss": "reinforce", "clip_low": 0.1}, "clip_low", 'loss = "ppo" or "gspo" (here loss = "reinforce")'),
    ({"kl_loss_type": "k2"}, "kl_loss_type", "kl_loss_coef > 0 (here kl_loss_coef = 0.0)"),
    ({"kl_coef": 0.1}, "kl_coef", "kl_in_reward = true (here kl_in_reward = false)"),
    ({"kl_in_reward": True, "kl_target": 0.2}, "kl_target", 'kl_controller = "adaptive" (here kl_in_reward = true, '
     'kl_controller = "fixed")'),
    ({"dynamic_sampling_max_groups": 3}, "dynamic_sampling_max_groups", "dynamic_sampling = true"),
    ({"overlong_factor": 0.5}, "overlong_factor", "overlong_buffer > 0"),
    ({"correction": "mis", "is_cap": 3.0}, "is_cap", '"decoupled" (here correction = "mis")'),
    ({"is_upper": 3.0}, "is_upper",
     'correction = "mis", "seq_mis", "icepop" or "seq_icepop" (here correction = "tis")'),
    ({"correction": "icepop", "mis_ratio": "mu_over_pi"}, "mis_ratio", 'correction = "mis" or "seq_mis"'),
    ({"decoupled_filter": "zero"}, "decoupled_filter", 'correction = "decoupled"'),
    ({"distill_coef": 0.5}, "distill_coef", "distill_teacher set (here distill_teacher = unset)"),
], ids=lambda v: v if isinstance(v, str) and "=" not in v else None)
def test_algorithm_key_that_does_not_apply_is_refused(algo: dict, key: str, why: str) -> None:
    msg = _err({**BASE, "algorithm": algo})
    assert f"x.toml: algorithm: algorithm.{key} does not apply: " in msg and why in msg, msg


def test_algorithm_keys_that_apply_or_stay_default_load() -> None:
    a = validate_config({**BASE, "algorithm": {"advantage": "gae", "lam": 0.9, "critic_lr": 1e-3, "gamma": 0.99,
                                               "kl_in_reward": True, "kl_controller": "adaptive", "kl_target": 0.2,
                                               "loss": "ppo", "clip_c": 3.0, "dynamic_sampling": True,
                                               "dynamic_sampling_max_groups": 4, "correction": "seq_mis",
                                               "mis_ratio": "mu_over_pi", "is_upper": 4.0}}).algorithm
    assert a.lam == 0.9 and a.kl_target == 0.2 and a.is_upper == 4.0
    plain = validate_config(BASE).algorithm  # every group's defaults are there, applying or not
    assert plain.critic_lr == 1e-5 and plain.clip_c is None and plain.kl_target == 0.1
    assert "critic_lr" not in plain.applicable() and "clip_low" in plain.applicable()
    assert validate_config({**BASE, "algorithm": plain.applicable()}).algorithm == plain


def test_refused_key_through_extends_and_set(tmp_path: Path) -> None:
    """A base file for GAE extended with another estimator: the critic keys it sets are refused."""
    gae = REPO / "configs" / "tiny_cpu_gae.toml"
    with pytest.raises(ConfigError, match="algorithm.lam does not apply"):
        load_config(gae, ["algorithm.advantage=grpo"])
    with pytest.raises(ConfigError, match="algorithm.clip_c does not apply"):
        load_config(REPO / "configs" / "tiny_cpu_gspo.toml", ["algorithm.clip_c=3.0"])


def test_docs_table_of_which_keys_apply_matches_the_rules() -> None:
    from asyncrl.config_algorithm import RULES

    doc = (REPO / "docs" / "algorithms.md").read_text()
    table = doc[doc.index("## Which keys apply when"):]
    for rule in RULES:
        keys = ", ".join(f"`{k}`" for k in rule.keys.model_fields)
        assert f"| {keys} | {rule.what} | `{rule.when.split(' (')[0]}`" in table, rule.what


def test_sft_and_rm_train_missing_inputs_say_the_command_that_makes_them(tmp_path: Path, tiny_model_dir: Path) -> None:
    root = Path(__file__).resolve().parents[1] / "configs"
    res = _cli("sft", str(root / "sft" / "tiny_sft.toml"), "--run-dir", str(tmp_path / "r"),
               "--set", f"model.path={tmp_path}/models/tiny")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"asyncrl model tiny --out {tmp_path}/models/tiny" in res.stderr
    res = _cli("rm-train", str(root / "rm" / "tiny_rm.toml"), "--run-dir", str(tmp_path / "r"),
               "--set", f"model.path={tiny_model_dir}", "--set", f"data.train={tmp_path}/data/arith_pref/train.parquet")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"asyncrl data arith --kind preference --out {tmp_path}/data/arith_pref" in res.stderr


def test_data_hints_name_the_preparer() -> None:
    from asyncrl.data.hints import data_hint, model_hint

    sft_hint = data_hint(Path("d/arith_sft/train.parquet"))
    assert sft_hint == "make it with `asyncrl data arith --kind sft --out d/arith_sft`"
    assert "--sft-out d/arith_tools_sft" in data_hint(Path("d/arith_tools_sft/train.parquet"))
    assert data_hint(Path("d/gsm8k/test.parquet")) == "make it with `asyncrl data gsm8k --out d/gsm8k`"
    assert "asyncrl data custom" in data_hint(Path("elsewhere/x.parquet"))
    assert "import-gguf" in model_hint(Path("models/smollm2-135m"))
