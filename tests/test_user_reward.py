"""User reward functions given as ``path/to/file.py:function``: loading, signature checks, and bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reward.functions import UnknownRewardError, get_reward_fn
from reward.safe_call import SafeRewardCaller

REPO = Path(__file__).resolve().parents[1]

USER_FILE = '''
def exact(data_source, response, ground_truth, extra_info):
    return {"score": float(response.strip() == ground_truth), "length": len(response)}


def scaled(data_source, response, ground_truth, extra_info, scale=0.5):
    return scale * len(response)


def varargs(*args):
    return float(len(args))


def too_few(response, ground_truth):
    return 1.0


def keyword_only(data_source, response, ground_truth, extra_info, *, weight):
    return weight


NOT_A_FUNCTION = 3
'''


@pytest.fixture()
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FILE)
    return path


def test_file_function_loads_and_scores_through_safe_caller(user_file: Path) -> None:
    fn = get_reward_fn(f"{user_file}:exact")
    assert fn("x", " 42 ", "42", {}) == {"score": 1.0, "length": 4}
    assert get_reward_fn(f"{user_file}:exact") is fn  # the file is imported once per process
    assert get_reward_fn(f"{user_file}:varargs")("a", "b", "c", {}) == 4.0
    with SafeRewardCaller(timeout_s=5.0) as caller:
        results = caller.score_batch([
            (f"{user_file}:exact", "custom", "42", "42", {}),
            (f"{user_file}:exact", "custom", "41", "42", {}),
            (f"{user_file}:scaled", "custom", "abcd", "", {"k": 1}),
        ])
    assert results == [(1.0, None), (0.0, None), (2.0, None)]


def test_relative_path_is_from_the_working_directory(user_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(user_file.parent)
    assert get_reward_fn("my_rewards.py:scaled")("d", "ab", "", {}) == 1.0
    assert get_reward_fn("./my_rewards.py:exact")("d", "1", "1", {})["score"] == 1.0


def test_errors_name_the_file_and_function(user_file: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "reward.py"
    with pytest.raises(UnknownRewardError, match=f"file not found: {missing}"):
        get_reward_fn(f"{missing}:score")
    with pytest.raises(UnknownRewardError, match=rf"{user_file}.* has no function 'nope' \(functions there: exact, "):
        get_reward_fn(f"{user_file}:nope")
    with pytest.raises(UnknownRewardError, match="'.*my_rewards.py:too_few' has signature \\(response, ground_truth\\)"
                                                 ".*4 positional arguments"):
        get_reward_fn(f"{user_file}:too_few")
    with pytest.raises(UnknownRewardError, match="keyword_only.*weight"):
        get_reward_fn(f"{user_file}:keyword_only")
    with pytest.raises(UnknownRewardError, match="NOT_A_FUNCTION' is not callable"):
        get_reward_fn(f"{user_file}:NOT_A_FUNCTION")
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    with pytest.raises(UnknownRewardError, match=f"importing {broken} raised SyntaxError"):
        get_reward_fn(f"{broken}:f")
    with pytest.raises(UnknownRewardError, match="tests.reward_fns_for_tests.*has no function 'absent'"):
        get_reward_fn("tests.reward_fns_for_tests:absent")
    with pytest.raises(UnknownRewardError, match="unknown reward function 'file.py:'"):
        get_reward_fn("file.py:")


def test_bad_file_function_in_safe_caller_scores_0(user_file: Path) -> None:
    with SafeRewardCaller(timeout_s=5.0) as caller:
        reward, error = caller.score(f"{user_file}:too_few", "x", "r", "g", {})
    assert reward == 0.0 and "too_few" in error and "4 positional" in error


def _up(config: Path, function: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", "up", str(config), "--set", f"reward.function={function}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_up_with_bad_reward_function_exits_2(tmp_path: Path, tiny_model_dir: Path, user_file: Path) -> None:
    from cli.data.arith import write_arith

    train, _ = write_arith(tmp_path / "data", n_train=4, n_test=2)
    config = tmp_path / "run.toml"
    config.write_text(f'[model]\npath = "{tiny_model_dir}"\n[data]\ntrain = "{train}"\n'
                      f'[run]\ndir = "{tmp_path / "run"}"\n')
    missing = tmp_path / "missing_reward.py"
    res = _up(config, f"{missing}:score")
    assert res.returncode == 2, res.stderr
    assert "reward.function" in res.stderr and str(missing) in res.stderr and "Traceback" not in res.stderr
    res = _up(config, f"{user_file}:too_few")
    assert res.returncode == 2, res.stderr
    assert "too_few" in res.stderr and "4 positional" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()  # nothing started
