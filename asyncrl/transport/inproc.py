"""The in-process backend: named channels inside one Python process, for pipeline tests.

Same contract as :mod:`asyncrl.transport.zmq` (bytes in, bytes out; a receiving endpoint drops
messages over ``max_message_mb``; a server's send to a client that is not connected returns False;
a client that connects again under the same identity takes it over, like ``ROUTER_HANDOVER``;
connecting before the other side binds is fine, messages wait), without sockets: every endpoint
whose address matches shares one :class:`Hub` channel. Thread-safe: the learner's I/O thread, the
test's thread and an asyncio loop may all use one hub. The asyncio endpoints wait by polling the
hub every few milliseconds, which is plenty for tests and costs nothing when idle for long.

Transports made with the default hub see each other (as processes on one host would); pass
``hub=Hub()`` for an isolated set. Nothing here is encrypted: ``curve_dir`` is ignored.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence

from asyncrl.transport.base import (
    AsyncClient,
    AsyncSender,
    Client,
    DropCounter,
    Endpoint,
    Receiver,
    Sender,
    Server,
    Transport,
    TransportError,
    addresses,
)

log = logging.getLogger("asyncrl.transport")

_ASYNC_TICK_S = 0.002


class _Channel:
    """One address: what its binder receives, and (server) each connected client's inbox."""

    def __init__(self) -> None:
        self.bound: Endpoint | None = None
        self.inbox: deque[tuple[bytes, bytes]] = deque()  # (sender identity or b"", data)
        self.clients: dict[bytes, deque[bytes]] = {}  # identity -> what the server sent it


class Hub:
    """Every channel of a set of in-process transports, behind one lock and condition."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.channels: dict[str, _Channel] = {}

    def channel(self, address: str) -> _Channel:
        """Under ``cond``: the channel of ``address`` (made on first use by either side)."""
        return self.channels.setdefault(address, _Channel())


DEFAULT_HUB = Hub()


class _InprocEndpoint(Endpoint):
    def __init__(self, transport: InprocTransport, address: str) -> None:
        self.transport, self.address, self.hub = transport, address, transport.hub
        self.closed = False

    def _inbox(self) -> deque:
        raise NotImplementedError

    def _ready(self) -> bool:
        """Under the hub's lock: a message is waiting."""
        return not self.closed and bool(self._inbox())

    def _take(self, timeout_s: float | None) -> object | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self.hub.cond:
            while True:
                if self.closed:
                    raise TransportError(f"endpoint {self.address} is closed")
                box = self._inbox()
                while box:
                    item = box.popleft()
                    self.hub.cond.notify_all()  # a sender may wait for room (hwm)
                    data = item[1] if isinstance(item, tuple) else item
                    if len(data) <= self.transport.max_bytes:
                        return item
                    self.transport.oversized += 1  # what libzmq's MAXMSGSIZE does, silently
                    log.warning("%s: dropped a %d-byte message over the %d-byte limit", self.address, len(data),
                                self.transport.max_bytes)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self.hub.cond.wait(left)

    def _put(self, box: deque, item: object) -> None:
        """Under the lock: queue ``item``, waiting while ``hwm`` messages are already queued."""
        while len(box) >= self.transport.hwm:
            self.hub.cond.wait()
        box.append(item)
        self.hub.cond.notify_all()


class _Bound(_InprocEndpoint):
    def __init__(self, transport: InprocTransport, address: str) -> None:
        super().__init__(transport, address)
        with self.hub.cond:
            ch = self.hub.channel(address)
            if ch.bound is not None:
                raise TransportError(f"cannot bind inproc {address}: address already in use")
            ch.bound = self

    def _inbox(self) -> deque:
        return self.hub.channel(self.address).inbox

    def close(self) -> None:
        with self.hub.cond:
            if self.closed:
                return
            self.closed = True
            ch = self.hub.channel(self.address)
            if ch.bound is self:
                ch.bound = None
                ch.inbox.clear()  # like a closed socket: what was queued for it is gone
            self.hub.cond.notify_all()


class InprocReceiver(_Bound, Receiver):
    def recv(self, timeout_s: float | None) -> bytes | None:
        item = self._take(timeout_s)
        return None if item is None else item[1]  # type: ignore[index]


class InprocServer(_Bound, Server):
    def __init__(self, transport: InprocTransport, address: str, drops: DropCounter | None = None) -> None:
        super().__init__(transport, address)
        self.drops = drops  # nothing malformed at the frame level can arrive in-process

    def recv(self, timeout_s: float | None) -> tuple[bytes, bytes] | None:
        item = self._take(timeout_s)
        return None if item is None else item  # type: ignore[return-value]

    def send(self, peer: bytes, data: bytes) -> bool:
        with self.hub.cond:
            box = self.hub.channel(self.address).clients.get(peer)
            if box is None or self.closed:
                log.warning("cannot reach %s: not connected", peer.decode(errors="replace"))
                return False
            self._put(box, bytes(data))
            return True


class InprocSender(_InprocEndpoint, Sender):
    def __init__(self, transport: InprocTransport, address: str | Sequence[str]) -> None:
        self.targets = addresses(address)
        super().__init__(transport, ",".join(self.targets))
        self._next = 0  # round-robin over the targets, as a PUSH socket does

    def send(self, data: bytes) -> None:
        with self.hub.cond:
            if self.closed:
                raise TransportError(f"endpoint {self.address} is closed")
            target = self.targets[self._next % len(self.targets)]
            self._next += 1
            self._put(self.hub.channel(target).inbox, (b"", bytes(data)))

    def close(self) -> None:
        self.closed = True


class InprocClient(_InprocEndpoint, Client):
    def __init__(self, transport: InprocTransport, address: str, identity: bytes) -> None:
        super().__init__(transport, address)
        self.identity = identity
        self.box: deque[bytes] = deque()
        with self.hub.cond:  # a second client under this identity takes it over (ROUTER_HANDOVER)
            self.hub.channel(address).clients[identity] = self.box

    def _inbox(self) -> deque:
        return self.box

    def send(self, data: bytes) -> None:
        with self.hub.cond:
            if self.closed:
                raise TransportError(f"endpoint {self.address} is closed")
            self._put(self.hub.channel(self.address).inbox, (self.identity, bytes(data)))

    def recv(self, timeout_s: float | None) -> bytes | None:
        return self._take(timeout_s)  # type: ignore[return-value]

    def close(self) -> None:
        with self.hub.cond:
            self.closed = True
            clients = self.hub.channel(self.address).clients
            if clients.get(self.identity) is self.box:
                del clients[self.identity]
            self.hub.cond.notify_all()


class InprocAsyncSender(AsyncSender):
    def __init__(self, inner: InprocSender) -> None:
        self.inner, self.address = inner, inner.address

    async def send(self, data: bytes) -> None:
        self.inner.send(data)

    def close(self) -> None:
        self.inner.close()


class InprocAsyncClient(AsyncClient):
    def __init__(self, inner: InprocClient) -> None:
        self.inner, self.address, self.identity = inner, inner.address, inner.identity

    async def send(self, data: bytes) -> None:
        self.inner.send(data)

    async def recv(self, timeout_s: float | None) -> bytes | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            got = self.inner.recv(0)
            if got is not None:
                return got
            if deadline is not None and time.monotonic() >= deadline:
                return None
            await asyncio.sleep(_ASYNC_TICK_S)

    def close(self) -> None:
        self.inner.close()


class InprocTransport(Transport):
    def __init__(self, *, max_message_mb: int = 256, hwm: int = 1000, hub: Hub | None = None) -> None:
        self.max_bytes, self.hwm = max_message_mb << 20, hwm
        self.hub = hub or DEFAULT_HUB
        self.oversized = 0  # messages dropped by this transport's receiving endpoints for size
        self.endpoints: list[Endpoint] = []

    def _keep(self, ep: Endpoint) -> Endpoint:
        self.endpoints.append(ep)
        return ep

    def push(self, address: str | Sequence[str]) -> InprocSender:
        return self._keep(InprocSender(self, address))  # type: ignore[return-value]

    def pull(self, address: str) -> InprocReceiver:
        return self._keep(InprocReceiver(self, address))  # type: ignore[return-value]

    def server(self, address: str, drops: DropCounter | None = None) -> InprocServer:
        return self._keep(InprocServer(self, address, drops))  # type: ignore[return-value]

    def client(self, address: str, identity: bytes) -> InprocClient:
        return self._keep(InprocClient(self, address, identity))  # type: ignore[return-value]

    def apush(self, address: str | Sequence[str]) -> InprocAsyncSender:
        return self._keep(InprocAsyncSender(InprocSender(self, address)))  # type: ignore[return-value]

    def aclient(self, address: str, identity: bytes) -> InprocAsyncClient:
        return self._keep(InprocAsyncClient(InprocClient(self, address, identity)))  # type: ignore[return-value]

    def poll(self, endpoints: Sequence[Endpoint], timeout_s: float) -> list[Endpoint]:
        for ep in endpoints:
            if not isinstance(ep, (InprocReceiver, InprocServer, InprocClient)) or ep.hub is not self.hub:
                raise TypeError(f"cannot poll {type(ep).__name__}: only this transport's receiving endpoints")
        deadline = time.monotonic() + timeout_s
        with self.hub.cond:
            while True:
                ready = [ep for ep in endpoints if ep._ready()]  # type: ignore[attr-defined]
                left = deadline - time.monotonic()
                if ready or left <= 0:
                    return ready
                self.hub.cond.wait(left)

    def close(self, linger_s: float = 2.0) -> None:
        for ep in self.endpoints:
            ep.close()
        self.endpoints.clear()
