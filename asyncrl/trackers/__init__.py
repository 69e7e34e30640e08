"""Metric trackers: where :class:`asyncrl.metrics.MetricsLogger` sends each record besides
``metrics.jsonl``. One interface (:class:`Tracker`), one small file per backend (wandb, mlflow,
TensorBoard), any number at once, chosen by ``[logging]``::

    from pathlib import Path
    from asyncrl.config import LoggingSection
    from asyncrl.trackers import build_trackers

    trackers = build_trackers(LoggingSection(tensorboard=True), Path("runs/demo"), {"learner": {"lr": 1e-5}})
    trackers.log({"step": 1, "reward": {"mean": 0.5}, "prompt_ids": [3, 7]}, step=1)  # logs reward/mean only
    trackers.close()

With no backend enabled :func:`build_trackers` returns an empty :class:`TrackerSet`, which does
nothing: callers never ask whether logging is on. Backends log the numeric scalars of a record
(:func:`scalars`) and import their package lazily; :func:`check_trackers` names a missing package
(and the config key that wants it) before a run starts.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from asyncrl.config_base import ConfigError

if TYPE_CHECKING:
    from asyncrl.config import LoggingSection

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[trackers]' in the asyncrl checkout"
# Import name -> PyPI name, for the error message.
PIP_NAMES = {"wandb": "wandb", "mlflow": "mlflow-skinny", "sqlalchemy": "sqlalchemy", "alembic": "alembic",
             "tensorboard": "tensorboard"}


class Tracker(Protocol):
    """A metrics backend. ``record`` is a free-form (nested) dict; ``step`` its learner step."""

    def log(self, record: Mapping[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


class TrackerSet:
    """Several trackers as one; empty, it is the null tracker. Closing is idempotent."""

    def __init__(self, trackers: Sequence[Tracker] = ()) -> None:
        self.trackers = list(trackers)

    def log(self, record: Mapping[str, Any], step: int) -> None:
        for t in self.trackers:
            t.log(record, step)

    def close(self) -> None:
        trackers, self.trackers = self.trackers, []
        first: BaseException | None = None
        for t in trackers:  # every backend gets closed (and flushed) even when one fails
            try:
                t.close()
            except Exception as e:
                log.warning("closing %s failed: %s", type(t).__name__, e)
                first = first or e
        if first is not None:
            raise first


def flatten(tree: Mapping[str, Any], sep: str = "/", prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``; leaves (lists too) are kept as they are."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, sep, name + sep))
        else:
            out[name] = value
    return out


def _number(value: Any) -> float | None:
    """A float for a number (bools, 0-d tensors and numpy scalars too); None for anything else."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, (bool, int, float)):
        return float(value)
    return None


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric scalars of a record, nested keys joined with ``/``. Lists, strings and None are
    skipped; NaN and inf are kept (both stores hold them); the top-level ``step`` is the x axis, not a
    metric."""
    out = {}
    for key, value in flatten(record).items():
        number = _number(value)
        if number is not None and key != "step":
            out[key] = number
    return out


def ending_status() -> Literal["FINISHED", "FAILED", "KILLED"]:
    """How the run ends, read from the exception propagating while ``close()`` runs (if any): callers
    close trackers in ``finally`` blocks, so the stores can mark a crashed run as failed."""
    exc = sys.exc_info()[1]
    if exc is None or isinstance(exc, SystemExit) and not exc.code:
        return "FINISHED"
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


def _installed(module: str) -> bool:
    if module in sys.modules:  # None there means "import fails" (how tests simulate a missing package)
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def required_modules(lg: LoggingSection) -> dict[str, tuple[str, ...]]:
    """Config key -> the modules the enabled backend imports."""
    need: dict[str, tuple[str, ...]] = {}
    if lg.wandb:
        need["logging.wandb"] = ("wandb",)
    if lg.mlflow:
        uri = lg.mlflow_tracking_uri
        # The default store is sqlite (MLflow 3 deprecates the file store); mlflow-skinny leaves out
        # the SQLAlchemy store's own dependencies.
        sql = uri is None or uri.startswith(("sqlite:", "postgresql", "mysql", "mssql"))
        need["logging.mlflow"] = ("mlflow", "sqlalchemy", "alembic") if sql else ("mlflow",)
    if lg.tensorboard:
        need["logging.tensorboard"] = ("tensorboard",)
    return need


def check_trackers(lg: LoggingSection) -> None:
    """Raise :class:`ConfigError` naming the key and the install command when an enabled backend's
    package is missing (cheap: looks the modules up, imports nothing)."""
    for key, modules in required_modules(lg).items():
        missing = [m for m in modules if not _installed(m)]
        if missing:
            pips = " ".join(PIP_NAMES[m] for m in missing)
            raise ConfigError(f"{key} = true needs the Python package(s) {pips}, which are not installed: "
                              f"{INSTALL_HINT} (or pip install {pips}), or set {key} = false")


def build_trackers(lg: LoggingSection, run_dir: Path, config: Mapping[str, Any] | None = None, *,
                   resume_step: int | None = None) -> TrackerSet:
    """The backends ``lg`` enables, started for ``run_dir``; ``config`` (the resolved run config) goes to
    each as params/text. ``resume_step``: the checkpoint step a resumed run continues after (None: a
    fresh start)."""
    check_trackers(lg)
    run_dir = Path(run_dir)
    trackers = TrackerSet()
    try:
        if lg.wandb:
            from asyncrl.trackers.wandb import WandbTracker

            trackers.trackers.append(WandbTracker(run_dir, lg.wandb_project, lg.wandb_mode, config))
        if lg.mlflow:
            from asyncrl.trackers.mlflow import MlflowTracker

            trackers.trackers.append(MlflowTracker(run_dir, lg.mlflow_tracking_uri, lg.mlflow_experiment, config,
                                                   resume=resume_step is not None))
        if lg.tensorboard:
            from asyncrl.trackers.tensorboard import TensorBoardTracker

            log_dir = lg.tensorboard_dir if lg.tensorboard_dir is not None else run_dir / "tensorboard"
            trackers.trackers.append(TensorBoardTracker(log_dir, config, resume_step=resume_step))
    except BaseException:
        trackers.close()  # the ones already started
        raise
    return trackers
