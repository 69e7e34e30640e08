"""Transport: how asyncrl processes move bytes, and the typed items that travel over it.

* :mod:`asyncrl.transport.base`: the abstract endpoints (:class:`Sender`, :class:`Receiver`,
  :class:`Server`, :class:`Client` and their asyncio twins) and :class:`Transport`;
* :mod:`asyncrl.transport.zmq`: ZeroMQ sockets (limits, CURVE), the main path;
* :mod:`asyncrl.transport.inproc`: named channels inside one process (pipeline tests);
* :mod:`asyncrl.transport.items`: :class:`PromptItem` and :class:`ScoredGroup`, typed views over
  today's msgpack and Arrow wire formats.

    t = make_transport(cfg.transport)            # ZeroMQ, CURVE when transport.curve_dir is set
    pull = t.pull(cfg.transport.rewards[0])      # binds
    data = pull.recv(timeout_s=0.2)              # bytes or None
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    is_loopback,
)

if TYPE_CHECKING:
    from asyncrl.transport.zmq import ZmqTransport, make_socket, start_authenticator, tcp

_ZMQ_NAMES = ("ZmqTransport", "make_socket", "start_authenticator", "tcp")
BACKENDS = ("zmq", "inproc")

__all__ = ["AsyncClient", "AsyncSender", "BACKENDS", "Client", "DropCounter", "Endpoint", "Receiver", "Sender",
           "Server", "Transport", "TransportError", "ZmqTransport", "is_loopback", "make_socket", "make_transport",
           "start_authenticator", "tcp"]


def __getattr__(attr: str) -> Any:
    """The ZeroMQ names load pyzmq on first use: code that only needs the typed items or the
    in-process backend (the learner's maths, ``make gpu-check`` on machines without pyzmq) never
    imports it."""
    if attr in _ZMQ_NAMES:
        from asyncrl.transport import zmq as backend

        return getattr(backend, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def make_transport(cfg: Any, backend: str | None = None) -> Transport:
    """The backend for a ``[transport]`` section (``cfg.transport``): ``backend`` (or the section's
    ``backend`` key, if it has one) ``"zmq"`` (default) or ``"inproc"`` (one process, tests)."""
    name = backend or getattr(cfg, "backend", None) or "zmq"
    if name == "zmq":
        from asyncrl.transport.zmq import ZmqTransport

        return ZmqTransport(max_message_mb=cfg.max_message_mb, curve_dir=cfg.curve_dir, bind_host=cfg.bind_host)
    if name == "inproc":
        from asyncrl.transport.inproc import InprocTransport

        return InprocTransport(max_message_mb=cfg.max_message_mb)
    raise ValueError(f"transport.backend: {name!r} is not one of {', '.join(BACKENDS)}")
