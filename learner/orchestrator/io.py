"""The learner's network side: one thread owning every learner socket.

It serves generators' control messages (hello/credit/synced/heartbeat) on a ROUTER, hands
out prompts through the :class:`Dispatcher`, and receives scored trajectory groups on a
PULL socket into the :class:`GroupBuffer`. It also keeps the generators' membership: a
hello (first or after a restart) adds a generator, held until it serves the current
weights; one silent for ``learner.generator_timeout_s`` is declared gone, its prompts are
dispatched again, and if it speaks later it is told to ``rejoin``. The training thread talks to it through
thread-safe methods only; ZeroMQ sockets never leave this thread. Malformed messages
are dropped, counted and logged; the thread keeps running.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import pyarrow as pa
import zmq

from asyncrl import messages, schema
from asyncrl.config import RunConfig
from asyncrl.transport import DropCounter, make_socket, start_authenticator, tcp
from learner.orchestrator.buffer import GroupBuffer
from learner.orchestrator.dispatcher import Dispatcher

log = logging.getLogger("learner.io")


_ACK = messages.encode("ack")


def generator_identity(index: int, num_generators: int) -> bytes | None:
    """The ZeroMQ identity generator ``index`` uses; None for an index out of range."""
    return f"gen-{index}".encode() if 0 <= index < num_generators else None


class LearnerIO(threading.Thread):
    def __init__(self, cfg: RunConfig, dispatcher: Dispatcher) -> None:
        super().__init__(name="learner-io", daemon=True)
        self.cfg, self.dispatcher = cfg, dispatcher
        self.buffer = GroupBuffer()
        self.val_results: dict[int, pa.RecordBatch] = {}
        self.synced: dict[bytes, int] = {}
        self.sync_failed: dict[bytes, tuple[int, str]] = {}  # generator -> (version, why) it reported
        self.members: dict[bytes, int] = {}  # live generators -> incarnation (bumped by each hello)
        self.last_seen: dict[bytes, float] = {}
        self._incarnations: dict[bytes, int] = {}
        self.generators_gone = 0  # declared gone after generator_timeout_s of silence
        self.generator_restarts = 0  # hellos from a generator identity seen before
        self._identities = {generator_identity(i, cfg.rollout.num_generators)
                            for i in range(cfg.rollout.num_generators)}
        self.drops = DropCounter("learner")
        self.duplicates = 0
        self.duplicate_samples = 0
        self._last_expiry = time.monotonic()
        self.transport_s = 0.0  # seconds the I/O thread spent receiving and decoding trajectories
        self.bytes_in = 0
        self.cond = threading.Condition()
        self.commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.error: BaseException | None = None
        self._stop_flag = threading.Event()
        self.ctx = zmq.Context()
        t, mb = cfg.transport, cfg.transport.max_message_mb
        self.auth = start_authenticator(self.ctx, t.curve_dir)
        self.router = make_socket(self.ctx, zmq.ROUTER, max_message_mb=mb, curve_dir=t.curve_dir, server=True)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted generator takes over its identity
        self.router.bind(tcp(t.dispatch, t.bind_host))
        self.pull = make_socket(self.ctx, zmq.PULL, max_message_mb=mb, curve_dir=t.curve_dir, server=True)
        self.pull.bind(tcp(t.trajectories, t.bind_host))

    # ---- called from the training thread -------------------------------------------
    def send_all(self, payload: bytes) -> None:
        self.commands.put(("send_all", payload))

    def send_to(self, gens: list[bytes], payload: bytes) -> None:
        self.commands.put(("send_to", (list(gens), payload)))

    def generators(self) -> list[bytes]:
        with self.cond:
            return list(self.members)

    def membership(self) -> dict[bytes, int]:
        with self.cond:
            return dict(self.members)

    def membership_locked(self) -> dict[bytes, int]:
        """:meth:`membership` for predicates already running under ``self.cond``."""
        return dict(self.members)

    def request_validation(self, prompts: list[Any], max_tokens: int) -> list[int]:
        with self.cond:
            return self.dispatcher.add_validation(prompts, max_tokens)

    def wait_for(self, predicate: Any, timeout: float, what: str) -> Any:
        """Block until ``predicate()`` (run under the lock) returns non-None."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if self.error is not None:
                    raise RuntimeError(f"learner I/O thread failed: {self.error!r}")
                got = predicate()
                if got is not None:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
                self.cond.wait(min(left, 1.0))

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(timeout=10)

    # ---- the I/O thread --------------------------------------------------------------
    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.pull, zmq.POLLIN)
        try:
            while not self._stop_flag.is_set():
                self._run_commands()
                events = dict(poller.poll(20))
                if self.router in events:
                    self._on_control()
                if self.pull in events:
                    self._on_trajectory()
                self._expire()
                self._redispatch()
        except BaseException as e:  # surfaced to the training thread by wait_for
            log.exception("learner I/O thread crashed")
            with self.cond:
                self.error = e
                self.cond.notify_all()
        finally:
            if self.auth is not None:
                self.auth.stop()
            self.ctx.destroy(linger=500)

    def _run_commands(self) -> None:
        while True:
            try:
                cmd, arg = self.commands.get_nowait()
            except queue.Empty:
                return
            if cmd == "send_all":
                for gen in self.generators():
                    self._send(gen, arg)
            elif cmd == "send_to":
                for gen in arg[0]:
                    self._send(gen, arg[1])

    def _send(self, gen: bytes, payload: bytes) -> None:
        try:
            self.router.send_multipart([gen, payload])
        except zmq.ZMQError as e:  # peer gone (ROUTER_MANDATORY): it will say hello again
            log.warning("cannot reach %s: %s", gen.decode(errors="replace"), e)

    def _on_control(self) -> None:
        frames = self.router.recv_multipart()
        if len(frames) != 2:
            self.drops.drop("control-frames", f"{len(frames)} frames")
            return
        gen, data = frames
        try:
            msg = messages.decode(data)
        except messages.MessageError as e:
            self.drops.drop("control", str(e))
            return
        kind = msg["type"]
        if kind not in ("hello", "credit", "synced", "heartbeat", "sync_failed"):
            self.drops.drop("control-unexpected", kind)
            return
        if kind == "hello" and gen != generator_identity(msg["generator"], self.cfg.rollout.num_generators):
            self.drops.drop("control-identity", f"hello from {gen[:32]!r} as generator {msg['generator']}")
            return
        items: list = []
        with self.cond:
            self.last_seen[gen] = time.monotonic()
            if kind == "hello":
                self._hello(gen)
            member = gen in self.members
            if member and kind == "sync_failed":
                self.sync_failed[gen] = (msg["version"], msg["why"])
                log.warning("%s could not apply weights v%d: %s", gen.decode(errors="replace"), msg["version"],
                            msg["why"])
            elif member and kind != "heartbeat":
                self.dispatcher.update(gen, msg["version"], msg.get("count", 0))
                if kind == "synced":
                    self.synced[gen] = msg["version"]
                    self.dispatcher.release_generator(gen)
                items = self.dispatcher.take(gen)
            self.cond.notify_all()
        if not member:
            if gen in self._identities:  # declared gone, yet alive: it must start over
                self._send(gen, messages.encode("rejoin"))
            else:
                self.drops.drop("control-foreign", f"{kind} from {gen[:32]!r}, which never said hello")
        elif kind == "heartbeat":
            self._send(gen, _ACK)
        elif items:
            self._send(gen, messages.encode("prompts", items=items))

    def _hello(self, gen: bytes) -> None:
        """Under the lock: a generator (re)joined; it is held until it serves the current weights."""
        name = gen.decode(errors="replace")
        if gen in self.members or gen in self.dispatcher.versions:
            self.generator_restarts += 1
            log.warning("%s said hello again (restarted): its prompts in flight are dispatched again", name)
        self._lose(self.dispatcher.hold_generator(gen), f"{name} restarted")
        self._incarnations[gen] = self._incarnations.get(gen, 0) + 1
        self.members[gen] = self._incarnations[gen]
        self.synced.pop(gen, None)

    def _declare_gone(self, now: float) -> None:
        """Under the lock: generators silent past generator_timeout_s are gone."""
        limit = self.cfg.learner.generator_timeout_s
        for gen in [g for g in self.members if now - self.last_seen.get(g, now) > limit]:
            name = gen.decode(errors="replace")
            log.warning("%s sent nothing for %.0fs (learner.generator_timeout_s): declared gone", name, limit)
            del self.members[gen]
            self.synced.pop(gen, None)
            self.generators_gone += 1
            self._lose(self.dispatcher.hold_generator(gen), f"{name} is gone")

    def _on_trajectory(self) -> None:
        t0 = time.perf_counter()
        data = self.pull.recv()
        self.bytes_in += len(data)
        try:
            batch = schema.decode_batch(data)
        except schema.SchemaError as e:
            self.drops.drop("trajectory", str(e))
            return
        finally:
            self.transport_s += time.perf_counter() - t0  # receive + Arrow decode/validation
        gid = int(batch.column("group_id")[0].as_py())
        with self.cond:
            if batch.column("split")[0].as_py() == "val":
                self.val_results[gid] = batch
                self.dispatcher.val_arrived(gid)
            elif self.dispatcher.arrived(gid) is None:
                self.duplicates += 1
                self.duplicate_samples += batch.num_rows
                log.warning("dropped group %d: not in flight (a late duplicate of a re-dispatched prompt, "
                            "or foreign)", gid)
            else:
                self.buffer.add(batch)
            self.cond.notify_all()

    def _lose(self, gids: list[int], why: str) -> None:
        """Under the lock: re-queue these in-flight groups' prompts."""
        if gids:
            n = self.dispatcher.lose(gids)
            log.warning("re-dispatching %d prompt(s): %s", n, why)

    def _expire(self) -> None:
        """Groups out longer than learner.redispatch_after_s are presumed lost (a worker died)."""
        after = self.cfg.learner.redispatch_after_s
        now = time.monotonic()
        if now - self._last_expiry < 1.0:
            return
        self._last_expiry = now
        with self.cond:
            self._declare_gone(now)
            if after:
                self._lose(self.dispatcher.expired(after), f"no result within {after:.0f}s")
            self.cond.notify_all()

    def _redispatch(self) -> None:
        """Admission may have opened (versions moved): serve waiting credits."""
        with self.cond:
            pending = [(g, self.dispatcher.take(g)) for g in list(self.dispatcher.credits)]
        for gen, items in pending:
            if items:
                self._send(gen, messages.encode("prompts", items=items))
