"""The orchestrator's I/O pump: one thread owning the learner's two endpoints.

It serves generators' control messages (hello/credit/synced/heartbeat/sync_failed) on a
:class:`~asyncrl.transport.Server` at ``transport.dispatch``, hands out prompts through the
:class:`Dispatcher`, and receives scored trajectory groups on a :class:`~asyncrl.transport.Receiver`
at ``transport.trajectories`` into the buffer. What a message means for membership (a hello, a
silence, a generator declared gone speaking again) is decided by
:class:`~learner.orchestrator.membership.Membership` under the state's lock; this thread only
moves bytes. Other threads send through :meth:`IOPump.send_to` / :meth:`IOPump.send_all`
(endpoints never leave this thread). Malformed messages are dropped, counted and logged; the
thread keeps running. Any transport works (:func:`asyncrl.transport.make_transport`): ZeroMQ in
real runs, the in-process backend in pipeline tests.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from asyncrl import messages, schema
from asyncrl.config import RunConfig
from asyncrl.transport import DropCounter, Transport
from asyncrl.transport.items import PromptItem, ScoredGroup, encode_prompts
from learner.orchestrator.state import OrchestratorState

log = logging.getLogger("learner.io")

_ACK = messages.encode("ack")
_CONTROL = ("hello", "credit", "synced", "heartbeat", "sync_failed")


class IOPump(threading.Thread):
    def __init__(self, cfg: RunConfig, state: OrchestratorState, transport: Transport) -> None:
        super().__init__(name="learner-io", daemon=True)
        self.cfg, self.state, self.transport = cfg, state, transport
        self.drops = DropCounter("learner")
        self.transport_s = 0.0  # seconds spent receiving and decoding trajectories
        self.bytes_in = 0
        self._outbox: queue.Queue[tuple[list[bytes] | None, bytes]] = queue.Queue()  # (None: every member)
        self._stop_flag = threading.Event()
        self._last_expiry = time.monotonic()
        self.server = transport.server(cfg.transport.dispatch, drops=self.drops)
        self.pull = transport.pull(cfg.transport.trajectories)

    # ---- called from other threads ----------------------------------------------------
    def send_all(self, payload: bytes) -> None:
        self._outbox.put((None, payload))

    def send_to(self, gens: list[bytes], payload: bytes) -> None:
        self._outbox.put((list(gens), payload))

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(timeout=10)

    # ---- the I/O thread --------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self._stop_flag.is_set():
                self._flush_outbox()
                ready = self.transport.poll([self.server, self.pull], 0.02)
                if self.server in ready:
                    self._on_control()
                if self.pull in ready:
                    self._on_trajectory()
                self._expire()
                self._serve_credits()
        except BaseException as e:  # surfaced to the waiting threads by OrchestratorState.wait_for
            log.exception("learner I/O thread crashed")
            self.state.fail(e)
        finally:
            self.transport.close(linger_s=0.5)

    def _flush_outbox(self) -> None:
        while True:
            try:
                gens, payload = self._outbox.get_nowait()
            except queue.Empty:
                return
            for gen in self.state.members() if gens is None else gens:
                self.server.send(gen, payload)

    def _on_control(self) -> None:
        got = self.server.recv(0)
        if got is None:  # a malformed multi-frame message, counted by the server
            return
        gen, data = got
        try:
            msg = messages.decode(data)
        except messages.MessageError as e:
            self.drops.drop("control", str(e))
            return
        kind = msg["type"]
        if kind not in _CONTROL:
            self.drops.drop("control-unexpected", kind)
            return
        st = self.state
        if kind == "hello" and not st.membership.claims_own_index(gen, msg["generator"]):
            self.drops.drop("control-identity", f"hello from {gen[:32]!r} as generator {msg['generator']}")
            return
        with st.cond:
            member, items = self._apply(gen, kind, msg)
            st.cond.notify_all()
        if not member:
            if st.membership.is_ours(gen):  # declared gone, yet alive: it must start over
                self.server.send(gen, messages.encode("rejoin"))
            else:
                self.drops.drop("control-foreign", f"{kind} from {gen[:32]!r}, which never said hello")
        elif kind == "heartbeat":
            self.server.send(gen, _ACK)
        elif items:
            self.server.send(gen, encode_prompts(items))

    def _apply(self, gen: bytes, kind: str, msg: dict[str, Any]) -> tuple[bool, list[PromptItem]]:
        """Under the lock: what ``msg`` changes; returns (``gen`` is a member, prompts to send it)."""
        st = self.state
        st.membership.seen(gen, time.monotonic())
        if kind == "hello":
            st.hello(gen)
        if not st.membership.is_member(gen):
            return False, []
        if kind == "sync_failed":
            st.membership.mark_sync_failed(gen, msg["version"], msg["why"])
            return True, []
        if kind == "heartbeat":
            return True, []
        st.dispatcher.update(gen, msg["version"], msg.get("count", 0))
        if kind == "synced":
            st.synced(gen, msg["version"])
        return True, st.dispatcher.take(gen)

    def _on_trajectory(self) -> None:
        t0 = time.perf_counter()
        data = self.pull.recv(0)
        if data is None:
            return
        self.bytes_in += len(data)
        try:
            group = ScoredGroup.from_wire(data)
        except schema.SchemaError as e:
            self.drops.drop("trajectory", str(e))
            return
        finally:
            self.transport_s += time.perf_counter() - t0  # receive + Arrow decode/validation
        with self.state.cond:
            self.state.arrived(group)
            self.state.cond.notify_all()

    def _expire(self) -> None:
        """Once a second: silent generators are gone; groups out longer than
        learner.redispatch_after_s are presumed lost (a worker died)."""
        now = time.monotonic()
        if now - self._last_expiry < 1.0:
            return
        self._last_expiry = now
        after = self.cfg.learner.redispatch_after_s
        st = self.state
        with st.cond:
            st.declare_silent_gone(now)
            if after:
                st.lose(st.dispatcher.expired(after), f"no result within {after:.0f}s")
            st.cond.notify_all()

    def _serve_credits(self) -> None:
        """Admission may have opened (versions moved): serve waiting credits."""
        with self.state.cond:
            d = self.state.dispatcher
            pending = [(g, d.take(g)) for g in list(d.credits)]
        for gen, items in pending:
            if items:
                self.server.send(gen, encode_prompts(items))
