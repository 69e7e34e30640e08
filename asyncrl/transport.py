"""ZeroMQ sockets with the checks every asyncrl endpoint needs.

Endpoints are ``host:port`` strings from the config. Receivers enforce a size limit
(``ZMQ_MAXMSGSIZE``: oversized frames are dropped by libzmq before allocation) and
count what they drop; nothing is pickled. With ``transport.curve_dir`` every socket is
CURVE-encrypted and binding sides accept only authorized client keys (see asyncrl.curve).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import zmq

from asyncrl.config import parse_address

log = logging.getLogger(__name__)


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


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


class DropCounter:
    """Counts and logs (rate-limited) messages dropped as malformed, per reason."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.counts: Counter[str] = Counter()

    def drop(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        n = self.counts[reason]
        if n <= 5 or n & (n - 1) == 0:  # log the first few, then at powers of two
            log.warning("%s: dropped malformed message #%d (%s): %s", self.where, n, reason, detail[:200])

    @property
    def total(self) -> int:
        return sum(self.counts.values())
