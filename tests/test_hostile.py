"""Hostile input and dying workers during a real run (tiny model, real vLLM, ZeroMQ, gloo):

* 1,000 malformed, truncated, wrong-schema, foreign and oversized messages sent to every
  bound socket (learner dispatch ROUTER, learner trajectory PULL, reward PULL) while training:
  no crash, every malformed message counted, training still learns;
* under CURVE, an intruder without keys gets nothing through, and a reward worker killed with
  SIGKILL mid-run is restarted by `asyncrl up` and the run reaches its step limit.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from asyncrl import schema
from tests.e2e import REPO, _kill_session, port_overrides, read_metrics
from tests.test_wire import _row

pytestmark = pytest.mark.slow
CONFIG = REPO / "configs" / "tiny_cpu.toml"


def _garbage(rng: random.Random) -> list[bytes]:
    valid = schema.encode_batch(schema.make_batch([_row(group_id=10**9)]))  # well-formed but foreign
    wrong = schema.encode_batch(schema.make_batch([_row()]).drop_columns(["reward"]))  # wrong schema
    return [b"", rng.randbytes(rng.randint(1, 5000)), valid[: rng.randint(1, len(valid) - 1)], wrong,
            msgpack.packb({"type": "credit", "version": "x"}), msgpack.packb([1, 2, 3]),
            msgpack.packb({"type": "prompts", "items": [{"prompt_id": "no"}]}), valid]


class Fuzzer(threading.Thread):
    """Sends ``count`` hostile messages round-robin to the three bound sockets."""

    def __init__(self, addrs: dict[str, str], count: int, oversized: int) -> None:
        super().__init__(daemon=True)
        self.addrs, self.count, self.oversized = addrs, count, oversized
        self.sent = {k: 0 for k in addrs}
        self.sent_foreign = {k: 0 for k in addrs}

    def run(self) -> None:
        rng = random.Random(0)
        ctx = zmq.Context()
        socks = {"dispatch": ctx.socket(zmq.DEALER), "trajectories": ctx.socket(zmq.PUSH),
                 "rewards": ctx.socket(zmq.PUSH)}
        for name, s in socks.items():
            s.setsockopt(zmq.LINGER, 2000)
            s.connect(f"tcp://{self.addrs[name]}")
        pool = _garbage(rng)
        for i in range(self.count):
            name = list(socks)[i % 3]
            msg = pool[i % len(pool)] if i % len(pool) else rng.randbytes(rng.randint(1, 3000))
            if name == "dispatch" and msg is pool[-1]:
                msg = b"\x92\x01"  # a valid Arrow batch is not a control message: send junk msgpack instead
            socks[name].send(msg)
            self.sent[name] += 1
            self.sent_foreign[name] += msg is pool[-1]
            time.sleep(0.005)
        for _ in range(self.oversized):  # beyond transport.max_message_mb: libzmq drops it unread
            socks["trajectories"].send(b"\x00" * (3 << 20))
        time.sleep(1)
        ctx.destroy(linger=1000)


def _start_up(run_dir: Path, sets: list[str], max_steps: int) -> subprocess.Popen:
    argv = [sys.executable, "-m", "cli.main", "up", str(CONFIG), "--run-dir", str(run_dir),
            "--max-steps", str(max_steps)] + [a for s in sets for a in ("--set", s)]
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> list[str]:
    from cli.data.arith import write_arith

    train, test = write_arith(tmp_path_factory.mktemp("data"), n_train=400, n_test=16)
    return [f"model.path={tiny_model_dir}", f"data.train={train}", f"data.test={test}"]


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "asyncrl up ended early"
        if (run_dir / "metrics.jsonl").is_file() and any(
                r.get("step", 0) >= step and "reward_mean" in r for r in read_metrics(run_dir)):
            return
        time.sleep(0.5)
    raise AssertionError(f"step {step} not reached")


def test_fuzz_every_socket_during_a_run(data: list[str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    ports = port_overrides()
    addrs = {k.split("=")[0].split(".")[1]: k.split("=", 1)[1].strip('[]"') for k in ports}
    proc = _start_up(run_dir, data + ports + ["transport.max_message_mb=2"], max_steps=20)
    try:
        _wait_for_step(run_dir, 2, proc)
        fuzz = Fuzzer(addrs, count=1000, oversized=5)
        fuzz.start()
        fuzz.join(120)
        out, _ = proc.communicate(timeout=600)
    finally:
        _kill_session(proc.pid)
    assert proc.returncode == 0, out[-5000:]
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
    # training unaffected: it still learns the toy reward
    first = sum(r["reward_mean"] for r in steps[:5]) / 5
    assert sum(r["reward_mean"] for r in steps[-5:]) / 5 > first + 0.3
    print(f"\nfuzz: {sum(fuzz.sent.values())} messages + {fuzz.oversized} oversized; learner dropped "
          f"{last['messages_dropped']}, duplicates {last['duplicates_dropped']}, reward worker dropped {dropped}; "
          f"learner peak RSS {last['peak_rss_mb_r0']:.0f} MiB; reward {first:.2f} -> {steps[-1]['reward_mean']:.2f}")


def test_workers_killed_under_curve(data: list[str], tmp_path: Path) -> None:
    """Under CURVE (every socket encrypted, only authorized keys): a peer without a key gets nothing
    through; the reward worker killed with SIGKILL at step 3 and the generator killed with SIGKILL
    at step 6 are restarted (and re-authenticate; the generator joins a re-formed weight-sync group
    and gets the current weights before any prompt), and the run reaches its step limit with every
    prompt trained exactly once and no sample older than max_staleness."""
    from asyncrl.curve import create_keys

    from asyncrl.curve import CurveKeys, secure_client

    keys = create_keys(tmp_path / "keys")
    other = create_keys(tmp_path / "other")  # an intruder that knows the server's public key, not authorized
    (other / "server.key").write_bytes((keys / "server.key").read_bytes())
    run_dir = tmp_path / "run"
    ports = port_overrides()
    addrs = {k.split("=")[0].split(".")[1]: k.split("=", 1)[1].strip('[]"') for k in ports}
    proc = _start_up(run_dir, data + ports + ["learner.redispatch_after_s=8", "run.restart_backoff_s=1",
                                              f"transport.curve_dir={keys}"], max_steps=14)
    ctx = zmq.Context()
    try:
        lines: list[str] = []
        pids: dict[str, int] = {}
        for line in proc.stdout:
            lines.append(line)
            for name in ("reward-0", "rollout-0"):
                if f"started {name} (pid" in line and name not in pids:
                    pids[name] = int(line.split("(pid ")[1].split(")")[0])
            if "[learner]" in line and "step 2/" in line:
                for name in ("trajectories", "dispatch", "rewards"):  # an intruder without an authorized key
                    intruder = ctx.socket(zmq.DEALER if name == "dispatch" else zmq.PUSH)
                    intruder.setsockopt(zmq.LINGER, 0)
                    secure_client(intruder, CurveKeys(other))
                    intruder.connect(f"tcp://{addrs[name]}")
                    for _ in range(20):
                        intruder.send(b"not allowed")
            if "[learner]" in line and "step 3/" in line:
                os.kill(pids["reward-0"], signal.SIGKILL)
            if "[learner]" in line and "step 6/" in line:
                os.kill(pids["rollout-0"], signal.SIGKILL)
                break
        out, _ = proc.communicate(timeout=600)
    finally:
        _kill_session(proc.pid)
        ctx.destroy(linger=0)
    out = "".join(lines) + out
    assert proc.returncode == 0, out[-5000:]
    assert "reward-0 was killed by signal 9; restarting it" in out
    assert "rollout-0 was killed by signal 9; restarting it" in out
    events = [json.loads(x) for x in (run_dir / "supervisor.jsonl").read_text().splitlines()]
    assert [e["process"] for e in events] == ["reward-0", "rollout-0"]
    steps = [r for r in read_metrics(run_dir) if "reward_mean" in r]
    assert [r["step"] for r in steps] == list(range(1, 15))
    trained = [p for r in steps for p in r["prompt_ids"]]
    assert len(trained) == len(set(trained)) == 14 * 4  # < one pass over the data: each prompt once
    assert max(r["staleness_max"] for r in steps) <= 2  # the restarted generator got current weights
    assert steps[-1]["generator_restarts"] == 1 and steps[-1]["worker_restarts"] == 2
    assert "forming weight-sync group epoch 1" in out
    assert steps[-1]["messages_dropped"] == 0  # the intruder never got a message through
    assert "refused a peer without an authorized CURVE key" in out
    print(f"\nreward worker + generator restarts: prompts re-dispatched {steps[-1]['prompts_redispatched']}, "
          f"samples lost {steps[-1]['samples_lost']} (then regenerated), late duplicates dropped "
          f"{steps[-1]['duplicates_dropped']}, weight syncs retried {steps[-1]['sync_failures']}")
