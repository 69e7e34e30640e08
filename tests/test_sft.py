"""``asyncrl sft``: response-only loss masks, a tiny model memorising a fixed set, checkpoints and
bad input. The export starting an RL run with real vLLM generators: test_hostile.py's CURVE run
trains it (the SFT run is tests/conftest.py::sft_run)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from learner.supervised.sft import encode_chat
from tests.conftest import sft
from tests.e2e import read_metrics


def _write(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_assistant_tokens_only_are_targets(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "ab"},
            {"role": "assistant", "content": "xy"}, {"role": "user", "content": "c"},
            {"role": "assistant", "content": "z"}]
    ids, mask = encode_chat(tok, chat)
    target_text = tok.decode([i for i, m in zip(ids, mask) if m])
    assert target_text == "xy<|im_end|>\nz<|im_end|>\n"
    assert len(ids) == len(mask) and tok.decode(ids).startswith("<|im_start|>system\nS")


def test_messages_format_and_system_prompt(tmp_path: Path) -> None:
    from asyncrl.data.format import DataError
    from asyncrl.data.supervised import load_sft
    from asyncrl.train_config import SFTData

    chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    path = _write(tmp_path / "m.parquet", [{"messages": chat}])
    got = load_sft(path, SFTData(train=path, format="messages", system_prompt="S"))
    assert got == [[{"role": "system", "content": "S"}] + chat]
    bad = _write(tmp_path / "b.parquet", [{"messages": chat[:1]}])
    with pytest.raises(DataError, match="row 0, column 'messages': no assistant turn"):
        load_sft(bad, SFTData(train=bad, format="messages"))


def test_tiny_model_memorises_a_fixed_set(sft_run: Path, tiny_model_dir: Path) -> None:
    recs = read_metrics(sft_run)
    train = [r for r in recs if "loss" in r]
    val = [r["val_loss"] for r in recs if "val_loss" in r]
    assert train[-1]["loss"] < 0.2 * train[0]["loss"], (train[0]["loss"], train[-1]["loss"])
    assert val[-1] < 0.2 * val[0]
    assert all(r["computed_tokens"] <= r["target_tokens"] * 10 for r in train)  # packed: no pad waste
    ckpts = sorted(p.name for p in (sft_run / "checkpoints").iterdir())
    assert ckpts == ["final", "step_000040", "step_000060"]  # last 2 periodic exports kept
    tok = AutoTokenizer.from_pretrained(sft_run / "checkpoints" / "final")
    model = AutoModelForCausalLM.from_pretrained(sft_run / "checkpoints" / "final")
    ids = tok.apply_chat_template([{"role": "user", "content": "Spell cat."}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).startswith("c-a-t")


def test_loss_curve_in_mlflow_and_tensorboard(sft_run: Path) -> None:
    """sft_run logs to both trackers too (its --set): the loss curve there is metrics.jsonl's."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps, losses = zip(*[(r["step"], r["loss"]) for r in read_metrics(sft_run) if "loss" in r])
    assert steps == tuple(range(1, 61))
    saved = json.loads((sft_run / "mlflow_run.json").read_text())
    client = MlflowClient(saved["tracking_uri"])
    run = client.get_run(saved["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["train.lr"] == "0.01"
    history = sorted((m.step, m.value) for m in client.get_metric_history(saved["run_id"], "loss"))
    assert history == list(zip(steps, losses))  # float64 both ways
    acc = EventAccumulator(str(sft_run / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("loss")
    assert tuple(e.step for e in events) == steps
    assert [e.value for e in events] == pytest.approx(losses, rel=1e-6)  # TensorBoard keeps float32


@pytest.mark.parametrize("rows,message", [
    ([{"prompt": "a"}], "missing required column 'response'"),
    ([{"prompt": "a", "response": 3}], "row 0, column 'response': expected a string"),
    ([], "has no rows"),
])
def test_bad_data_exits_2_naming_the_problem(tiny_model_dir: Path, tmp_path: Path, rows: list, message: str) -> None:
    table = pa.Table.from_pylist(rows) if rows else pa.table({"prompt": pa.array([], pa.string()),
                                                              "response": pa.array([], pa.string())})
    pq.write_table(table, tmp_path / "bad.parquet")
    res = sft(tmp_path, f"model.path={tiny_model_dir}", f"data.train={tmp_path / 'bad.parquet'}")
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"data.train: {tmp_path / 'bad.parquet'}" in res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr


def test_missing_model_dir_exits_2(tmp_path: Path) -> None:
    res = sft(tmp_path, f"model.path={tmp_path / 'nope'}")
    assert res.returncode == 2 and "model.path:" in res.stderr and "no config.json" in res.stderr


def test_bad_config_key_exits_2(tmp_path: Path) -> None:
    res = sft(tmp_path, "train.lrr=1")
    assert res.returncode == 2 and "train.lrr: unknown key" in res.stderr
