"""The ZeroMQ backend: real TCP sockets with the limits every asyncrl endpoint needs.

Each socket gets ``LINGER`` (2 s), ``MAXMSGSIZE`` (``transport.max_message_mb``: oversized frames
are dropped by libzmq before allocation, and the connection is reset), ``SNDHWM``/``RCVHWM``
(1000 messages). With ``transport.curve_dir`` every socket is CURVE-encrypted: binding sides are
CURVE servers and the first bind starts the ZAP authenticator, which admits only the client keys
in ``<curve_dir>/authorized`` (see :mod:`asyncrl.curve`). The server (the learner's ROUTER) sets
``ROUTER_MANDATORY`` (a send to a peer that is gone fails instead of vanishing) and
``ROUTER_HANDOVER`` (a restarted generator takes its identity over). Nothing is pickled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from asyncrl.config import parse_address
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


def tcp(addr: str, bind_host: str | None = None) -> str:
    """``host:port`` → ``tcp://host:port`` (optionally replacing the host for binds)."""
    host, port = parse_address(addr)
    return f"tcp://{bind_host or host}:{port}"


def make_socket(ctx: zmq.Context, kind: int, *, max_message_mb: int, linger_ms: int = 2000,
                hwm: int = 1000, curve_dir: Path | None = None, server: bool = False) -> zmq.Socket:
    """A socket with asyncrl's limits; with ``curve_dir`` a CURVE server (binding) or client."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_mb << 20)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if curve_dir is not None:
        from asyncrl.curve import CurveKeys, secure_client, secure_server

        (secure_server if server else secure_client)(sock, CurveKeys(Path(curve_dir)))
    return sock


def start_authenticator(ctx: zmq.Context, curve_dir: Path | None) -> Any:
    """The ZAP handler a binding process needs under CURVE (None without CURVE); ``.stop()`` it."""
    if curve_dir is None:
        return None
    from asyncrl.curve import Authenticator

    return Authenticator(ctx, Path(curve_dir) / "authorized")


def _ms(timeout_s: float | None) -> int | None:
    return None if timeout_s is None else max(0, int(timeout_s * 1000))


class _ZmqEndpoint(Endpoint):
    def __init__(self, sock: zmq.Socket, address: str) -> None:
        self.sock, self.address = sock, address

    def close(self) -> None:
        if not self.sock.closed:
            self.sock.close()

    def _recv(self, timeout_s: float | None) -> bytes | None:
        if timeout_s is not None and not self.sock.poll(_ms(timeout_s)):
            return None
        return self.sock.recv()


class ZmqSender(_ZmqEndpoint, Sender):
    def send(self, data: bytes) -> None:
        self.sock.send(data)


class ZmqReceiver(_ZmqEndpoint, Receiver):
    def recv(self, timeout_s: float | None) -> bytes | None:
        return self._recv(timeout_s)


class ZmqClient(_ZmqEndpoint, Client):
    def __init__(self, sock: zmq.Socket, address: str, identity: bytes) -> None:
        super().__init__(sock, address)
        self.identity = identity

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def recv(self, timeout_s: float | None) -> bytes | None:
        return self._recv(timeout_s)


class ZmqServer(_ZmqEndpoint, Server):
    def __init__(self, sock: zmq.Socket, address: str, drops: DropCounter | None) -> None:
        super().__init__(sock, address)
        self.drops = drops

    def recv(self, timeout_s: float | None) -> tuple[bytes, bytes] | None:
        while True:
            if timeout_s is not None and not self.sock.poll(_ms(timeout_s)):
                return None
            frames = self.sock.recv_multipart()
            if len(frames) == 2:
                return frames[0], frames[1]
            if self.drops is not None:  # a peer that is not a DEALER sending one frame
                self.drops.drop("control-frames", f"{len(frames)} frames")
            if timeout_s is not None:
                timeout_s = 0.0  # only what is already queued now: the caller polls again

    def send(self, peer: bytes, data: bytes) -> bool:
        try:
            self.sock.send_multipart([peer, data])
            return True
        except zmq.ZMQError as e:  # peer gone (ROUTER_MANDATORY): it will say hello again
            log.warning("cannot reach %s: %s", peer.decode(errors="replace"), e)
            return False


class ZmqAsyncSender(_ZmqEndpoint, AsyncSender):
    def __init__(self, sock: zmq.asyncio.Socket, address: str) -> None:
        super().__init__(sock, address)
        self.asock = sock

    async def send(self, data: bytes) -> None:
        await self.asock.send(data)


class ZmqAsyncClient(_ZmqEndpoint, AsyncClient):
    def __init__(self, sock: zmq.asyncio.Socket, address: str, identity: bytes) -> None:
        super().__init__(sock, address)
        self.asock, self.identity = sock, identity

    async def send(self, data: bytes) -> None:
        await self.asock.send(data)

    async def recv(self, timeout_s: float | None) -> bytes | None:
        if timeout_s is not None and not await self.asock.poll(_ms(timeout_s)):
            return None
        return await self.asock.recv()


class ZmqTransport(Transport):
    """Real sockets. ``bind_host`` replaces the host of every bound address (``transport.bind_host``)."""

    def __init__(self, *, max_message_mb: int = 256, curve_dir: Path | None = None, bind_host: str | None = None,
                 hwm: int = 1000, linger_ms: int = 2000) -> None:
        self.max_message_mb, self.max_bytes = max_message_mb, max_message_mb << 20
        self.curve_dir = Path(curve_dir) if curve_dir is not None else None
        self.bind_host, self.hwm, self.linger_ms = bind_host, hwm, linger_ms
        self._ctx: zmq.Context | None = None
        self._actx: zmq.asyncio.Context | None = None
        self.auth: Any = None  # the ZAP handler, started by the first bind under CURVE
        self.endpoints: list[_ZmqEndpoint] = []

    @property
    def ctx(self) -> zmq.Context:
        if self._ctx is None:
            self._ctx = zmq.Context()
        return self._ctx

    def _socket(self, kind: int, *, server: bool) -> zmq.Socket:
        if server and self.auth is None:
            self.auth = start_authenticator(self.ctx, self.curve_dir)
        return self._configure(self.ctx, kind, server)

    def _asocket(self, kind: int) -> zmq.asyncio.Socket:
        self._actx = self._actx or zmq.asyncio.Context()
        return self._configure(self._actx, kind, server=False)

    def _configure(self, ctx: Any, kind: int, server: bool) -> Any:
        return make_socket(ctx, kind, max_message_mb=self.max_message_mb, linger_ms=self.linger_ms, hwm=self.hwm,
                           curve_dir=self.curve_dir, server=server)

    def _bind(self, sock: zmq.Socket, address: str) -> None:
        url = tcp(address, self.bind_host)
        try:
            sock.bind(url)
        except zmq.ZMQError as e:
            sock.close(linger=0)
            raise TransportError(f"cannot bind {url} (transport address {address}): {e}") from None

    def _keep(self, ep: Any) -> Any:
        self.endpoints.append(ep)
        return ep

    def push(self, address: str | Sequence[str]) -> ZmqSender:
        sock = self._socket(zmq.PUSH, server=False)
        for addr in addresses(address):
            sock.connect(tcp(addr))
        return self._keep(ZmqSender(sock, ",".join(addresses(address))))

    def pull(self, address: str) -> ZmqReceiver:
        sock = self._socket(zmq.PULL, server=True)
        self._bind(sock, address)
        return self._keep(ZmqReceiver(sock, address))

    def server(self, address: str, drops: DropCounter | None = None) -> ZmqServer:
        sock = self._socket(zmq.ROUTER, server=True)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted generator takes over its identity
        self._bind(sock, address)
        return self._keep(ZmqServer(sock, address, drops))

    def client(self, address: str, identity: bytes) -> ZmqClient:
        sock = self._socket(zmq.DEALER, server=False)
        sock.setsockopt(zmq.IDENTITY, identity)
        sock.connect(tcp(address))
        return self._keep(ZmqClient(sock, address, identity))

    def apush(self, address: str | Sequence[str]) -> ZmqAsyncSender:
        sock = self._asocket(zmq.PUSH)
        for addr in addresses(address):
            sock.connect(tcp(addr))
        return self._keep(ZmqAsyncSender(sock, ",".join(addresses(address))))

    def aclient(self, address: str, identity: bytes) -> ZmqAsyncClient:
        sock = self._asocket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, identity)
        sock.connect(tcp(address))
        return self._keep(ZmqAsyncClient(sock, address, identity))

    def poll(self, endpoints: Sequence[Endpoint], timeout_s: float) -> list[Endpoint]:
        poller = zmq.Poller()
        by_sock: dict[zmq.Socket, Endpoint] = {}
        for ep in endpoints:
            if not isinstance(ep, (ZmqReceiver, ZmqServer, ZmqClient)):
                raise TypeError(f"cannot poll {type(ep).__name__}: only this transport's receiving endpoints")
            poller.register(ep.sock, zmq.POLLIN)
            by_sock[ep.sock] = ep
        return [by_sock[s] for s, _ in poller.poll(_ms(timeout_s))]

    def close(self, linger_s: float = 2.0) -> None:
        linger = int(linger_s * 1000)
        for ep in self.endpoints:
            if not ep.sock.closed:
                ep.sock.close(linger=linger)
        self.endpoints.clear()
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        for ctx in (self._ctx, self._actx):
            if ctx is not None:
                ctx.destroy(linger=linger)
        self._ctx = self._actx = None
