"""Hostile input and dying workers during a real run (tiny model, real vLLM, ZeroMQ, gloo):

* 1,000 malformed, truncated, wrong-schema, foreign and oversized messages sent to every
  bound socket (learner dispatch ROUTER, learner trajectory PULL, reward PULL) while training
  (the shared tiny run of tests/conftest.py::tiny_run): no crash, every malformed message
  counted, training still learns (test_e2e.py::test_tiny_cpu_learns);
* under CURVE, an intruder without keys gets nothing through, and a reward worker killed with
  SIGKILL mid-run is restarted by `asyncrl up` and the run reaches its step limit.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
import zmq

from benchmarks.launch import addresses
from tests.conftest import SharedRun
from tests.e2e import REPO, read_metrics, start_up

pytestmark = pytest.mark.slow
CONFIG = REPO / "configs" / "tiny_cpu.toml"
CURVE_STEPS = 12


def test_fuzz_every_socket_during_a_run(tiny_run: SharedRun) -> None:
    fuzz, run_dir = tiny_run.fuzz, tiny_run.run_dir
    assert tiny_run.returncode == 0, tiny_run.stdout[-5000:]
    steps = [r for r in read_metrics(run_dir) if "reward_mean" in r]
    last = steps[-1]
    # learner sockets: every malformed message dropped and counted; foreign groups counted as duplicates
    learner_bad = fuzz.sent["dispatch"] + fuzz.sent["trajectories"] - fuzz.sent_foreign["trajectories"]
    assert last["messages_dropped"] == learner_bad, (last["messages_dropped"], fuzz.sent, fuzz.sent_foreign)
    # foreign but well-formed groups: straight to the learner, or scored and forwarded by the reward worker
    assert last["duplicates_dropped"] == fuzz.sent_foreign["trajectories"] + fuzz.sent_foreign["rewards"]
    # the reward worker counted its share (it forwards foreign but well-formed groups; the learner drops them)
    reward_log = (run_dir / "logs" / "reward-0.log").read_text()
    dropped = int(re.findall(r"(\d+) messages dropped", reward_log)[-1])
    assert dropped == fuzz.sent["rewards"] - fuzz.sent_foreign["rewards"]
    print(f"\nfuzz: {sum(fuzz.sent.values())} messages + {fuzz.oversized} oversized; learner dropped "
          f"{last['messages_dropped']}, duplicates {last['duplicates_dropped']}, reward worker dropped {dropped}; "
          f"learner peak RSS {last['peak_rss_mb_r0']:.0f} MiB")


def test_workers_killed_under_curve(sft_run: Path, arith_dir: Path, tmp_path: Path) -> None:
    """Under CURVE (every socket encrypted, only authorized keys): a peer without a key gets nothing
    through; the reward worker killed with SIGKILL at step 3 and the generator killed with SIGKILL
    at step 6 are restarted (and re-authenticate; the generator joins a re-formed weight-sync group
    and gets the current weights before any prompt), and the run reaches its step limit with every
    prompt trained exactly once and no sample older than max_staleness.

    The policy is the export of ``asyncrl sft`` (tests/test_sft.py's run): an SFT export is the
    ``model`` of an RL config, served by vLLM and trained by the learner."""
    from asyncrl.curve import CurveKeys, create_keys, secure_client

    keys = create_keys(tmp_path / "keys")
    other = create_keys(tmp_path / "other")  # an intruder that knows the server's public key, not authorized
    (other / "server.key").write_bytes((keys / "server.key").read_bytes())
    run_dir = tmp_path / "run"
    sets = [f"model.path={sft_run / 'checkpoints' / 'final'}", f"data.train={arith_dir / 'train.parquet'}",
            f"data.test={arith_dir / 'test.parquet'}", "learner.redispatch_after_s=8", "run.restart_backoff_s=1",
            f"transport.curve_dir={keys}"]
    ctx = zmq.Context()
    with start_up(CONFIG, run_dir, sets, max_steps=CURVE_STEPS) as up:
        addrs = addresses(up.sets)
        try:
            for line in up.follow(timeout_s=600):
                if "[learner]" in line and "step 2/" in line:
                    for name in ("trajectories", "dispatch", "rewards"):  # an intruder without an authorized key
                        intruder = ctx.socket(zmq.DEALER if name == "dispatch" else zmq.PUSH)
                        intruder.setsockopt(zmq.LINGER, 0)
                        secure_client(intruder, CurveKeys(other))
                        intruder.connect(f"tcp://{addrs[name]}")
                        for _ in range(20):
                            intruder.send(b"not allowed")
                if "[learner]" in line and "step 3/" in line:
                    os.kill(up.pids["reward-0"], signal.SIGKILL)
                if "[learner]" in line and "step 6/" in line:
                    os.kill(up.pids["rollout-0"], signal.SIGKILL)
                    break
            code = up.wait(600)
        finally:
            ctx.destroy(linger=0)
    out = up.output
    assert code == 0, out[-5000:]
    assert "reward-0 was killed by signal 9; restarting it" in out
    assert "rollout-0 was killed by signal 9; restarting it" in out
    events = [json.loads(x) for x in (run_dir / "supervisor.jsonl").read_text().splitlines()]
    assert [e["process"] for e in events] == ["reward-0", "rollout-0"]
    steps = [r for r in read_metrics(run_dir) if "reward_mean" in r]
    assert [r["step"] for r in steps] == list(range(1, CURVE_STEPS + 1))
    trained = [p for r in steps for p in r["prompt_ids"]]
    assert len(trained) == len(set(trained)) == CURVE_STEPS * 4  # < one pass over the data: each prompt once
    assert max(r["staleness_max"] for r in steps) <= 2  # the restarted generator got current weights
    assert steps[-1]["generator_restarts"] == 1 and steps[-1]["worker_restarts"] == 2
    assert "forming weight-sync group epoch 1" in out
    assert steps[-1]["messages_dropped"] == 0  # the intruder never got a message through
    assert "refused a peer without an authorized CURVE key" in out
    assert (run_dir / "checkpoints" / "final" / "config.json").is_file()  # the SFT export trained on
    print(f"\nreward worker + generator restarts: prompts re-dispatched {steps[-1]['prompts_redispatched']}, "
          f"samples lost {steps[-1]['samples_lost']} (then regenerated), late duplicates dropped "
          f"{steps[-1]['duplicates_dropped']}, weight syncs retried {steps[-1]['sync_failures']}")
