"""Shared fixtures: tiny models and data made in the test, free ports, and the end-to-end runs
several tests assert on (each a real ``asyncrl up``, started once per session)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks.launch import free_port  # noqa: F401  (the one port picker; tests import it from here)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHEAP_SHARED = {"tiny_model_dir", "arith_dir"}  # made in a second or two: each worker makes its own


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs two workers) each worker picks ports from its own range."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if worker and count:
        from benchmarks.launch import PORT_RANGE_ENV

        width = 12000 // int(count)
        lo = 20000 + int(worker.removeprefix("gw")) * width
        os.environ[PORT_RANGE_ENV] = f"{lo}-{lo + width}"


@pytest.hookimpl(tryfirst=True)  # before xdist's hook reads the groups into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that share an expensive session- or module-scoped fixture (an ``asyncrl up`` run, a
    torchrun launch) form one ``xdist_group``, so ``--dist loadgroup`` runs that fixture once, on
    one worker; the rest are spread over the workers freely."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    shared: dict[int, list[str]] = {}
    for i, item in enumerate(items):
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        keys = [f"{defs[-1].scope}:{name}" if defs[-1].scope == "session" else f"{item.module.__name__}:{name}"
                for name, defs in info.name2fixturedefs.items()
                if defs and defs[-1].scope in ("session", "module") and name not in CHEAP_SHARED
                and defs[-1].func.__module__.startswith("tests.")]  # ours, not pytest's or a plugin's
        for key in keys[1:]:
            parent[find(key)] = find(keys[0])
        shared[i] = keys
    for i, keys in shared.items():
        if keys:
            items[i].add_marker(pytest.mark.xdist_group(find(keys[0])))


@pytest.hookimpl(trylast=True)  # after xdist's hook
def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail loudly where pytest-xdist's groups do not reach the node ids (pytest 9.2 reads ``_id``, which
    xdist 3.8 does not set): every shared run would silently be made once per worker."""
    if not session.config.getoption("loadgroup", False):
        return
    lost = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
    if lost:
        raise pytest.UsageError(f"xdist groups not applied to {len(lost)} test(s), e.g. {lost[0]} "
                                "(pytest and pytest-xdist versions: see pyproject.toml)")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cli.model.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def arith_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Toy arithmetic prompts for the end-to-end runs (400 train, 32 test)."""
    from cli.data.arith import write_arith

    out = tmp_path_factory.mktemp("data") / "arith"
    write_arith(out, n_train=400, n_test=32, seed=0)
    return out


def data_overrides(model: Path, data: Path) -> list[str]:
    return [f"model.path={model}", f"data.train={data / 'train.parquet'}", f"data.test={data / 'test.parquet'}"]


@dataclass
class SharedRun:
    """One finished ``asyncrl up`` whose run dir several tests assert on."""

    run_dir: Path
    returncode: int
    stdout: str
    fuzz: Any = None  # tests.fuzz.Fuzzer, for the run that was fuzzed


TINY_STEPS = 20
TINY_VAL_SET = "sampled"  # tiny_run's [[data.val]] set: 8 test prompts x 4 replies at temperature 1


@pytest.fixture(scope="session")
def tiny_run(tiny_model_dir: Path, arith_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SharedRun:
    """configs/tiny_cpu.toml with a tensor-parallel generator (``rollout.tensor_parallel_size=2``
    alone), 20 steps, fuzzed from step 2 on: 1,000 malformed, truncated, wrong-schema and foreign
    messages to every bound socket, then 5 above ``transport.max_message_mb=2``. Asserted on by
    test_e2e.py (it learns, both TP workers take every sync, the export loads, resolved configs, a
    second validation set sampled 4 times per prompt: TINY_VAL_SET) and test_hostile.py (every
    hostile message dropped and counted)."""
    from benchmarks.launch import addresses
    from tests.e2e import REPO, start_up
    from tests.fuzz import Fuzzer

    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    sets = data_overrides(tiny_model_dir, arith_dir) + ["rollout.tensor_parallel_size=2", "transport.max_message_mb=2"]
    sets.append(f'data.val=[{{name="{TINY_VAL_SET}", path="{arith_dir / "test.parquet"}", n=4, temperature=1.0, '
                f'max_prompts=8}}]')
    with start_up(REPO / "configs" / "tiny_cpu.toml", run_dir, sets, max_steps=TINY_STEPS) as up:
        up.wait_for_step(2)
        fuzz = Fuzzer(addresses(up.sets), count=1000, oversized=5, pause_s=0.002)
        fuzz.start()
        fuzz.join(120)
        code = up.wait(600)
    return SharedRun(run_dir, code, up.output, fuzz)


SFT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sft" / "tiny_sft.toml"
SFT_PAIRS = [("Say hi.", "hi there"), ("Count.", "1 2 3 4"), ("Spell cat.", "c-a-t"), ("Color?", "blue"),
             ("Say bye.", "bye now"), ("Add 2+2.", "2 + 2 = 4. #### 4"), ("Name?", "tiny"), ("Yes?", "yes")]


def sft(tmp: Path, *sets: str, max_steps: int = 60) -> subprocess.CompletedProcess:
    """``asyncrl sft configs/sft/tiny_sft.toml --run-dir TMP/run``."""
    from tests.e2e import run_cli

    return run_cli("sft", SFT_CONFIG, tmp / "run", sets, max_steps)


@pytest.fixture(scope="session")
def sft_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model memorising SFT_PAIRS (60 steps); its export is also the policy of
    test_hostile.py's CURVE run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = tmp_path_factory.mktemp("sft")
    data = tmp / "train.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": p, "response": r} for p, r in SFT_PAIRS] * 4), data)
    res = sft(tmp, f"model.path={tiny_model_dir}", f"data.train={data}", f"data.test={data}", "train.epochs=100",
              "train.batch_size=8", "train.checkpoint_every=20", "train.keep_checkpoints=2", "train.eval_every=30",
              "train.max_tokens_per_microbatch=200", "train.lr=1e-2",
              "logging.tensorboard=true", "logging.mlflow=true", max_steps=60)  # test_sft reads both back
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return tmp / "run"


SYNC_STEPS, SYNC_EVERY = 6, 3


@pytest.fixture(scope="session")
def sync_sets(tiny_model_dir: Path, arith_dir: Path) -> list[str]:
    """The tiny config synchronous (max_staleness 0: each step's prompts do not depend on timing),
    a checkpoint every 3 steps, the newest kept."""
    return data_overrides(tiny_model_dir, arith_dir) + [
        "learner.max_staleness=0", f"learner.checkpoint_every={SYNC_EVERY}", "learner.keep_checkpoints=1",
        f"logging.samples_every={SYNC_EVERY}"]


@pytest.fixture(scope="session")
def sync_run(sync_sets: list[str], tmp_path_factory: pytest.TempPathFactory) -> SharedRun:
    """:func:`sync_sets` uninterrupted for 6 steps: the reference of test_resume.py and the sync
    side of the async-vs-sync benchmark report (test_benchmarks.py)."""
    from tests.e2e import REPO, run_up

    run_dir = tmp_path_factory.mktemp("sync_run") / "run"
    res = run_up(REPO / "configs" / "tiny_cpu.toml", run_dir, sync_sets, max_steps=SYNC_STEPS)
    return SharedRun(run_dir, res.returncode, res.stdout)
