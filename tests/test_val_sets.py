"""``[[data.val]]`` validation sets: config errors name the key path, pre-flight names a missing file,
deploy's TOML keeps them. (The sets run in tests/test_orchestrator.py and the shared tiny run.)"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from asyncrl.config import ConfigError, load_config, validate_config
from asyncrl.data.format import DataError
from tests.conftest import data_overrides
from tests.e2e import REPO

TINY = REPO / "configs" / "tiny_cpu.toml"


def _load(*sets: str):  # noqa: ANN202
    return load_config(TINY, list(sets))


def test_val_sets_parse_and_bad_ones_name_the_key() -> None:
    cfg = _load('data.val=[{name="hard", path="h.parquet", n=4, temperature=0.7, max_prompts=8}]')
    (v,) = cfg.data.val
    assert (v.name, v.n, v.temperature, v.max_prompts, v.max_new_tokens) == ("hard", 4, 0.7, 8, None)
    assert _load().data.val == []
    cases = {'data.val=[{name="a", path="x"}, {name="b"}]': "data.val[1].path: Field required",
             'data.val=[{name="a", path="x", n=4}]': "data.val[0]: n=4 at temperature 0",
             'data.val=[{name="a", path="x"}, {name="a", path="y"}]': "data.val[1].name: 'a' is used by data.val[0]",
             'data.val=[{name="a/b", path="x"}]': "data.val[0].name: String should match pattern",
             'data.val=[{name="a", path="x", n=0, temperature=1.0}]': "data.val[0].n: Input should be greater",
             'data.val=[{name="a", path="x", colour=1}]': "data.val[0].colour: unknown key"}
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            _load(override)


def test_preflight_names_a_missing_val_file(tiny_model_dir: Path, arith_dir: Path, tmp_path: Path) -> None:
    from cli.preflight import check_inputs

    sets = data_overrides(tiny_model_dir, arith_dir)
    ok = f'data.val=[{{name="a", path="{arith_dir / "test.parquet"}"}}, {{name="b", path="{tmp_path / "no.parquet"}"}}]'
    with pytest.raises(DataError, match=r"data\.val\[1\]\.path: .*no\.parquet"):
        check_inputs(load_config(TINY, sets + [ok]))


def test_deploy_toml_keeps_val_sets() -> None:
    from cli.deploy.toml_text import config_toml

    cfg = _load('data.val=[{name="a", path="x.parquet", n=4, temperature=0.7}, {name="b", path="y"}]')
    text = config_toml(cfg)
    assert 'val = [{name = "a", path = "x.parquet", n = 4, temperature = 0.7}, {name = "b", path = "y"}]' in text
    assert validate_config(tomllib.loads(text)) == cfg


def test_val_set_metrics_vote_over_the_replies_answers() -> None:
    """The learner's side: reply texts of scored groups -> the gsm8k reward's answers -> maj@n."""
    from asyncrl.transport.items import ScoredGroup
    from learner.orchestrator.dispatcher import TokenizedPrompt
    from learner.orchestrator.validation import ValidationResult, ValSet, validation_metrics

    def group(gid: int, texts: list[str], rewards: list[float]) -> ScoredGroup:
        rows = [{"prompt_id": gid, "group_id": gid, "sample_index": i, "split": "val", "data_source": "gsm8k",
                 "ground_truth": "4", "prompt_token_ids": [1], "response_token_ids": [2], "behaviour_logprobs": [-1.0],
                 "response_text": t, "finish_reason": "stop", "policy_version": 3, "policy_version_end": 3,
                 "generator_index": 0, "gen_start_time": 0.0, "gen_end_time": 0.0, "is_baseline": False,
                 "attempt": 0} for i, t in enumerate(texts)]
        return ScoredGroup.from_rows(rows).with_rewards(rewards, [None] * len(rewards))

    groups = [group(0, ["#### 4", "#### 5", "#### 4", "no"], [1.0, 0.0, 1.0, 0.0]),  # votes 4: right
              group(1, ["#### 5", "#### 5", "#### 4", "#### 4"], [0.0, 0.0, 1.0, 1.0]),  # 2-2 tie: 5 came first
              group(2, ["no", "none", "nope", "nah"], [0.0] * 4)]  # no answer: wrong
    v = ValSet("g", [TokenizedPrompt(i, [1], "gsm8k", "4") for i in range(3)], n=4, temperature=1.0)
    m = validation_metrics([ValidationResult(v, groups)], reward_function=None)
    assert m["val/g/maj@4"] == 1 / 3 and m["val/g/accuracy"] == 4 / 12 and m["val/g/pass@4"] == 2 / 3
    assert m["val/g/policy_version_min"] == 3.0 and not any(k.startswith("val_") for k in m)
    assert "val/g/maj@4" not in validation_metrics([ValidationResult(v, groups)], reward_function="toy_digits")
