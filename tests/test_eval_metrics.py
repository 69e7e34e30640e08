"""The pure evaluation metrics (asyncrl/evaluation) and answer extraction (reward/answers.py), by hand."""

from __future__ import annotations

import itertools
import json
from math import comb
from pathlib import Path

import pytest

from asyncrl.evaluation import PromptResult, default_ks, majority_vote, pass_at_k, sample_seed, summarize
from asyncrl.evaluation.report import build_report, markdown_table, write_report
from reward.answers import extract_answers


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """The definition: the fraction of k-subsets of the n replies holding at least one correct one."""
    replies = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(replies[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_the_combinatorial_definition() -> None:
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                want = _brute_pass_at_k(n, c, k)
                assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12), (n, c, k)
                assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)
    # large n: the product form stays finite where C(n, k) would overflow a float
    assert 0 < pass_at_k(2000, 1, 1000) == pytest.approx(0.5)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 1) == 0.25
    with pytest.raises(ValueError, match="k=5"):
        pass_at_k(4, 1, 5)


def test_default_ks() -> None:
    assert default_ks(1) == [1]
    assert default_ks(4) == [1, 2, 4]
    assert default_ks(6) == [1, 2, 4, 6]


def test_majority_vote_ties_go_to_the_first_answer() -> None:
    assert majority_vote(["5", "4", "4", "5"], [0.0, 1.0, 1.0, 0.0]) == ("5", 0.0)  # 2-2 tie: "5" came first
    assert majority_vote(["5", "4", "4", "5", "4"], [0.0, 1.0, 1.0, 0.0, 1.0]) == ("4", 1.0)
    assert majority_vote([None, "7", None], [0.0, 1.0, 0.0]) == ("7", 1.0)  # no-answer replies do not vote
    assert majority_vote([None, None], [0.0, 0.0]) == (None, None)


def test_summarize_by_hand() -> None:
    rs = [PromptResult(0, "a", [1.0, 0.0, 1.0, 0.0], ["4", "5", "4", None], greedy_reward=1.0),
          PromptResult(1, "a", [0.0, 0.0, 0.0, 1.0], ["3", "3", None, "2"], greedy_reward=0.0),
          PromptResult(2, "b", [0.5, 0.0, 0.0, 0.0], [None, None, None, None], greedy_reward=0.5)]
    m = summarize(rs, [1, 2, 4])
    assert m["prompts"] == 3 and m["n"] == 4
    assert m["greedy_accuracy"] == pytest.approx(1 / 3)  # 0.5 is not the full reward
    assert m["greedy_reward_mean"] == pytest.approx(1.5 / 3)
    assert m["mean@4"] == pytest.approx(3.5 / 12)
    assert m["pass@1"] == pytest.approx((2 / 4 + 1 / 4 + 0) / 3)  # = fraction of correct replies
    assert m["pass@2"] == pytest.approx((1 - 1 / 6 + 1 - 3 / 6 + 0) / 3)  # 1 - C(n-c,2)/C(4,2)
    assert m["pass@4"] == pytest.approx(2 / 3)
    assert m["maj@4"] == pytest.approx(1 / 3)  # "4" right; "3" wrong; prompt 2 has no answer
    assert m["no_answer"] == [2]
    no_extractor = [PromptResult(0, "a", [1.0, 1.0]), PromptResult(1, "a", [0.0, 1.0])]
    m = summarize(no_extractor, [1, 2])
    assert m["maj@2"] is None and m["greedy_accuracy"] is None and m["pass@1"] == 0.75 and m["pass@2"] == 1.0
    with pytest.raises(ValueError, match="k=.3"):
        summarize(no_extractor, [1, 3])
    with pytest.raises(ValueError, match="same number"):
        summarize([PromptResult(0, "a", [1.0]), PromptResult(1, "a", [1.0, 0.0])], [1])


def test_report_splits_by_data_source_and_writes_table(tmp_path: Path) -> None:
    rs = [PromptResult(0, "gsm8k", [1.0, 1.0], ["1", "1"], 1.0), PromptResult(1, "math", [0.0, 1.0], ["x", "2"], 0.0),
          PromptResult(2, "math", [0.0, 0.0], [None, None], 0.0)]
    rep = build_report({"model": "m", "temperature": 1.0}, {"mix": rs, "one": rs[:1]}, [1, 2],
                       {"mix": {"path": "mix.parquet"}})
    mix = rep["sets"]["mix"]
    assert mix["path"] == "mix.parquet" and list(mix["by_data_source"]) == ["gsm8k", "math"]
    assert mix["by_data_source"]["math"]["pass@2"] == 0.5 and mix["by_data_source"]["gsm8k"]["pass@1"] == 1.0
    assert mix["by_data_source"]["math"]["maj@2"] == 0.0 and mix["by_data_source"]["math"]["no_answer"] == [2]
    assert mix["overall"]["pass@1"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert mix["rows"][1] == {"prompt_id": 1, "data_source": "math", "rewards": [0.0, 1.0], "answers": ["x", "2"],
                              "greedy_reward": 0.0, "greedy_answer": None}
    table = markdown_table(rep).splitlines()
    assert table[0] == "| set | data_source | prompts | greedy acc | mean@2 | pass@1 | pass@2 | maj@2 | no answer |"
    assert table[2] == "| mix | (all) | 3 | 0.333 | 0.500 | 0.500 | 0.667 | 0.333 | 1 |"
    assert table[4] == "| mix | math | 2 | 0.000 | 0.250 | 0.250 | 0.500 | 0.000 | 1 |"
    assert table[5] == "| one | gsm8k | 1 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 0 |"  # one source: one row
    js, md = write_report(rep, tmp_path)
    assert json.loads(js.read_text())["sets"]["one"]["overall"]["maj@2"] == 1.0
    assert "| mix | (all) |" in md.read_text() and "- temperature: 1.0" in md.read_text()


def test_extract_answers_follows_the_rewards() -> None:
    assert extract_answers(None, "openai/gsm8k", ["so #### 1,024", "#### 3 then #### 4", "none"]) == ["1024", "4", None]
    assert extract_answers(None, "arith", ["####12.0", "#### 12", "12"]) == ["12", "12", None]
    assert extract_answers(None, "HuggingFaceH4/MATH-500", ["\\boxed{\\dfrac12}", "\\boxed{\\frac{1}{2}}", "1/2"]) == \
        ["\\frac{1}{2}", "\\frac{1}{2}", None]
    assert extract_answers("math", "anything", ["\\boxed{7}"]) == ["7"]
    assert extract_answers("toy_digits", "arith", ["7"]) is None  # no extractor: maj@n not reported
    assert extract_answers(None, "unknown-source", ["7"]) is None


def test_sample_seed_is_stable_and_scoped() -> None:
    assert sample_seed(0, "a", 1) == sample_seed(0, "a", 1) < 2**31
    assert len({sample_seed(0, "a", 1), sample_seed(0, "b", 1), sample_seed(1, "a", 1), sample_seed(0, "a", 2)}) == 4
