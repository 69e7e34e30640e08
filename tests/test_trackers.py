"""asyncrl.trackers: MetricsLogger with mlflow, TensorBoard and wandb (offline) at once, read back
from their real local stores; resume; a missing package; records with non-numeric entries."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from asyncrl.config import ConfigError, LoggingSection
from asyncrl.metrics import MetricsLogger
from asyncrl.trackers import TrackerSet, check_trackers, scalars
from asyncrl.trackers.mlflow import RUN_FILE, default_tracking_uri, metric_key

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"learner": {"lr": 1e-5, "betas": [0.9, 0.99]}, "run": {"max_steps": 3}, "data": {"test": None},
          "model": {"path": "x" * 7000}}


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # no network: MLflow's usage pings would only wait


def _mlflow(run_dir: Path) -> tuple[MlflowClient, str]:
    saved = json.loads((run_dir / RUN_FILE).read_text())
    assert saved["tracking_uri"] == default_tracking_uri(run_dir)
    return MlflowClient(saved["tracking_uri"]), saved["run_id"]


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step))
    return [(m.step, m.value) for m in points]


def _tb(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return acc


def _tb_scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _log(logger: MetricsLogger, steps: range, offset: float = 0.0) -> None:
    for s in steps:
        logger.log({"step": s, "reward": {"mean": s / 4 + offset}, "prompt_ids": [s, s + 1], "note": "text"})


def test_scalars_flattens_and_skips_non_numbers() -> None:
    record = {"step": 3, "loss": 0.5, "n": 4, "ok": True, "nested": {"a": {"b": 2.0}, "s": "x"},
              "t0": torch.tensor(1.5), "np": np.float32(0.25), "t2": torch.ones(2), "ids": [1, 2],
              "none": None, "nan": float("nan")}
    out = scalars(record)
    assert math.isnan(out.pop("nan"))
    assert out == {"loss": 0.5, "n": 4.0, "ok": 1.0, "nested/a/b": 2.0, "t0": 1.5, "np": 0.25}


def test_metric_key_is_one_mlflow_accepts() -> None:
    assert metric_key("val/pass@4") == "val/pass_4"
    assert metric_key("/a//b/") == "a/b" and metric_key("a/../b") == "a/b"
    assert metric_key("x" * 300) == "x" * 250


def test_all_backends_at_once_read_back(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    lg = LoggingSection(wandb=True, wandb_mode="offline", mlflow=True, tensorboard=True)
    with MetricsLogger.from_config(lg, run_dir, max_steps=3, config=CONFIG) as m:
        m.log({"step": 1, "reward": {"mean": 0.25}, "loss": 1.25, "prompt_ids": [4, 5], "note": "x",
               "val/pass@4": 0.75, "t": torch.tensor(2.0), "skip": None})
        m.log({"step": 2, "reward": {"mean": 0.5}, "loss": float("nan")})
        m.log({"step": 3, "reward": {"mean": 1.0}, "loss": 0.5})

    client, run_id = _mlflow(run_dir)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert _history(client, run_id, "reward/mean") == [(1, 0.25), (2, 0.5), (3, 1.0)]
    loss = _history(client, run_id, "loss")
    assert [s for s, _ in loss] == [1, 2, 3] and math.isnan(loss[1][1]) and loss[2][1] == 0.5
    assert set(run.data.metrics) == {"reward/mean", "loss", "val/pass_4", "t"}  # no prompt_ids, note, step
    params = run.data.params
    assert params["learner.lr"] == "1e-05" and params["learner.betas"] == "[0.9, 0.99]"
    assert params["data.test"] == "None" and len(params["model.path"]) == 6000  # cut to MLflow's limit
    assert [a.path for a in client.list_artifacts(run_id)] == ["config.json"]
    artifact = Path(client.download_artifacts(run_id, "config.json", str(tmp_path)))
    assert json.loads(artifact.read_text()) == CONFIG  # uncut
    assert (run_dir / "mlflow-artifacts").is_dir() and (run_dir / "mlflow.db").is_file()

    acc = _tb(run_dir / "tensorboard")
    assert set(acc.Tags()["scalars"]) == {"reward/mean", "loss", "val/pass@4", "t"}
    assert _tb_scalars(acc, "reward/mean") == [(1, 0.25), (2, 0.5), (3, 1.0)]
    assert math.isnan(_tb_scalars(acc, "loss")[1][1])
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text.strip("`\n")) == CONFIG
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")

    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def test_crash_then_resume_continues_the_mlflow_run_and_purges_tensorboard(tmp_path: Path) -> None:
    run_dir, lg = tmp_path / "run", LoggingSection(mlflow=True, tensorboard=True)
    with pytest.raises(RuntimeError), MetricsLogger.from_config(lg, run_dir, 4, CONFIG) as m:
        _log(m, range(1, 4))
        raise RuntimeError("crashed after step 3; the checkpoint is at step 2")
    client, first = _mlflow(run_dir)
    assert client.get_run(first).info.status == "FAILED"
    bigger = {**CONFIG, "run": {"max_steps": 5}}  # continuing to a larger total
    with MetricsLogger.from_config(lg, run_dir, 5, bigger, resume_step=2) as m:
        _log(m, range(3, 6), offset=10.0)

    client, run_id = _mlflow(run_dir)
    assert run_id == first
    assert _history(client, run_id, "reward/mean") == [(1, 0.25), (2, 0.5), (3, 0.75), (3, 10.75), (4, 11.0),
                                                         (5, 11.25)]  # MLflow keeps the replayed step 3
    run = client.get_run(run_id)
    assert run.data.params["run.max_steps"] == "3"  # params are immutable in MLflow
    assert run.data.tags["asyncrl.changed_on_resume"] == "run.max_steps=5"
    assert run.info.status == "FINISHED"
    # TensorBoard hides the crashed process's step 3 (purge_step), keeps 1-2 and the new 3-5
    assert _tb_scalars(_tb(run_dir / "tensorboard"), "reward/mean") == [
        (1, 0.25), (2, 0.5), (3, 10.75), (4, 11.0), (5, 11.25)]

    with MetricsLogger.from_config(lg, run_dir, 2, CONFIG) as m:  # a fresh start in the same dir: a new run
        _log(m, range(1, 3), offset=100.0)
    _, fresh = _mlflow(run_dir)
    assert fresh != first
    assert _history(client, fresh, "reward/mean") == [(1, 100.25), (2, 100.5)]
    assert _tb_scalars(_tb(run_dir / "tensorboard"), "reward/mean") == [(1, 100.25), (2, 100.5)]


def test_no_tracker_is_the_null_tracker(tmp_path: Path) -> None:
    with MetricsLogger.from_config(LoggingSection(), tmp_path, 2, CONFIG) as m:
        assert isinstance(m.trackers, TrackerSet) and not m.trackers.trackers
        m.log({"step": 1, "loss": 1.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


@pytest.mark.parametrize(("key", "module", "package"), [("mlflow", "mlflow", "mlflow-skinny"),
                                                         ("mlflow", "alembic", "alembic"),
                                                         ("tensorboard", "tensorboard", "tensorboard")])
def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str, module: str,
                                  package: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    lg = LoggingSection(**{key: True})
    with pytest.raises(ConfigError, match=rf"logging\.{key} = true needs .*{package}.*\[trackers\]"):
        check_trackers(lg)
    with pytest.raises(ConfigError, match=rf"logging\.{key}"):
        MetricsLogger.from_config(lg, tmp_path, 2, {})
    assert not (tmp_path / "metrics.jsonl").exists()


def test_missing_package_exits_2_before_anything_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.main import app

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    res = CliRunner().invoke(app, ["up", str(REPO / "configs" / "tiny_cpu.toml"), "--set", "logging.tensorboard=true",
                                   "--set", "model.path=/nonexistent"])  # the tracker check comes first
    assert res.exit_code == 2, res.output
    assert "logging.tensorboard = true needs the Python package(s) tensorboard" in res.output
