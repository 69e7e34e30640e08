"""MLflow backend (``[logging] mlflow = true``): metrics per step, the config as params and as
``config.json``, by default in a sqlite store inside the run dir::

    tracker = MlflowTracker(Path("runs/demo"), None, "asyncrl", {"learner": {"lr": 1e-5}}, resume=False)
    tracker.log({"reward/mean": 0.5}, step=1)
    tracker.close()
    # then: mlflow ui --backend-store-uri sqlite:///runs/demo/mlflow.db

The store defaults to sqlite because MLflow 3 keeps the file store (``./mlruns``) in maintenance mode and
refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``. The run id is kept in ``<run dir>/mlflow_run.json``:
a resumed run (``run.resume``) continues the same MLflow run; a fresh start opens a new one. MLflow params
cannot change, so a resumed run whose config differs (a larger ``run.max_steps``) keeps the first values
and lists the new ones in the tag ``asyncrl.changed_on_resume``. Steps between the checkpoint and the crash
are logged again after a resume (MLflow keeps both points; the jsonl file and TensorBoard drop the old).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asyncrl.trackers import ending_status, flatten, scalars

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"


def default_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{(Path(run_dir) / 'mlflow.db').resolve()}"


def metric_key(key: str) -> str:
    """A name MLflow accepts: alphanumerics, ``_ - . / :`` and spaces, no empty or ``..`` path parts
    (``val/pass@4`` -> ``val/pass_4``), at most 250 characters."""
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

    key = re.sub(r"[^/\w.\- :]", "_", key)
    key = "/".join(p for p in key.split("/") if p not in ("", ".", ".."))
    return key[:MAX_ENTITY_KEY_LENGTH] or "_"


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class MlflowTracker:
    """One MLflow run per asyncrl run (continued on resume), written through ``MlflowClient``
    (no global active run: several loggers in one process stay apart)."""

    def __init__(self, run_dir: Path, tracking_uri: str | None, experiment: str,
                 config: Mapping[str, Any] | None, *, resume: bool) -> None:
        from mlflow.tracking import MlflowClient

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri or default_tracking_uri(self.run_dir)
        self.client = MlflowClient(self.tracking_uri)
        run_id = self._stored_run() if resume else None
        if run_id is None:
            run_id = self._new_run(experiment, local=tracking_uri is None)
        self.run_id: str | None = run_id
        self._log_config(dict(config or {}))

    def _stored_run(self) -> str | None:
        """The run id a previous start stored, when it is in this store and not deleted."""
        from mlflow.exceptions import MlflowException

        path = self.run_dir / RUN_FILE
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            log.info("mlflow: no readable %s; the resumed run starts a new MLflow run", path)
            return None
        if saved.get("tracking_uri") != self.tracking_uri:
            log.info("mlflow: %s names another tracking URI; starting a new MLflow run", path)
            return None
        try:
            run = self.client.get_run(saved["run_id"])
        except MlflowException:
            log.info("mlflow: run %s is not in %s; starting a new MLflow run", saved["run_id"], self.tracking_uri)
            return None
        if run.info.lifecycle_stage != "active":
            return None
        self.client.update_run(run.info.run_id, status="RUNNING")
        log.info("mlflow: continuing run %s in %s", run.info.run_id, self.tracking_uri)
        return str(run.info.run_id)

    def _new_run(self, name: str, *, local: bool) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            exp_id = exp.experiment_id
        else:  # the default store keeps its artifacts beside it, not in ./mlruns of the working directory
            where = (self.run_dir / "mlflow-artifacts").resolve().as_uri() if local else None
            exp_id = self.client.create_experiment(name, artifact_location=where)
        run = self.client.create_run(exp_id, run_name=self.run_dir.name,
                                     tags={"asyncrl.run_dir": str(self.run_dir.resolve())})
        run_id = str(run.info.run_id)
        (self.run_dir / RUN_FILE).write_text(json.dumps(
            {"tracking_uri": self.tracking_uri, "experiment_id": exp_id, "run_id": run_id}) + "\n")
        log.info("mlflow: run %s in %s", run_id, self.tracking_uri)
        return run_id

    def _log_config(self, config: dict[str, Any]) -> None:
        """Params: the flattened config (``learner.lr``), values cut to MLflow's length limit."""
        if not config:
            return
        from mlflow.entities import Param, RunTag
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

        assert self.run_id is not None
        params = {metric_key(k): str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in flatten(config, ".").items()}
        before = self.client.get_run(self.run_id).data.params
        for batch in _chunks([Param(k, v) for k, v in params.items() if k not in before], MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=batch)
        changed = [f"{k}={v}" for k, v in params.items() if k in before and before[k] != v]
        if changed:
            log.info("mlflow: params keep their first values; changed on resume: %s", ", ".join(changed))
            tag = RunTag("asyncrl.changed_on_resume", ", ".join(changed)[:MAX_TAG_VAL_LENGTH])
            self.client.log_batch(self.run_id, tags=[tag])
        self.client.log_dict(self.run_id, config, "config.json")  # whole, uncut

    def log(self, record: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        if self.run_id is None:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(k), v, now, step) for k, v in scalars(record).items()]
        for batch in _chunks(metrics, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch)

    def close(self) -> None:
        if self.run_id is not None:
            run_id, self.run_id = self.run_id, None
            self.client.set_terminated(run_id, status=ending_status())
