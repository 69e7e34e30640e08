"""ZeroMQ CURVE authentication and encryption for sockets bound beyond loopback.

``asyncrl keys --out DIR`` writes, with pyzmq's certificate format:

* ``server.key`` / ``server.key_secret`` - the binding side (learner, reward workers);
* ``client.key`` / ``client.key_secret`` - the connecting side (generators, reward workers
  towards the learner);
* ``authorized/client.key`` - public keys a server accepts (add one file per extra client key).

Set ``transport.curve_dir = DIR`` in the config. Hosts that only connect need
``client.key_secret`` and ``server.key``; hosts that bind need ``server.key_secret`` and
``authorized/``. A peer without an authorized key never gets a message through: the ZAP
handler refuses its handshake and the refusal is counted (``Authenticator.denied``).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)


class CurveError(ValueError):
    """Missing or unreadable key files; the message names the file."""


def create_keys(out: Path) -> Path:
    """Write a server and a client certificate pair and the authorized-keys folder to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(out, "server")
    client_public, _ = zmq.auth.create_certificates(out, "client")
    (out / "authorized").mkdir(exist_ok=True)
    shutil.copy(client_public, out / "authorized" / "client.key")
    return out


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise CurveError(f"transport.curve_dir: {path} not found (create keys with `asyncrl keys --out DIR`)")
    try:
        return zmq.auth.load_certificate(path)
    except (ValueError, OSError) as e:
        raise CurveError(f"transport.curve_dir: {path} is not a CURVE certificate ({e})") from None


@dataclass
class CurveKeys:
    directory: Path

    def server(self) -> tuple[bytes, bytes]:
        public, secret = _load(self.directory / "server.key_secret", True)
        if secret is None:
            raise CurveError(f"transport.curve_dir: {self.directory / 'server.key_secret'} has no secret key")
        return public, secret

    def client(self) -> tuple[bytes, bytes, bytes]:
        public, secret = _load(self.directory / "client.key_secret", True)
        server_public, _ = _load(self.directory / "server.key", False)
        if secret is None:
            raise CurveError(f"transport.curve_dir: {self.directory / 'client.key_secret'} has no secret key")
        return public, secret, server_public


class Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP handler thread, counting refused handshakes."""

    def __init__(self, ctx: zmq.Context, authorized: Path) -> None:
        super().__init__(ctx, log=logging.getLogger("asyncrl.curve.zap"))
        if not authorized.is_dir():
            raise CurveError(f"transport.curve_dir: {authorized} (authorized client keys) not found")
        self.denied = 0
        self.start()
        self.configure_curve(domain="*", location=str(authorized))

    def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                        user_id: str = "anonymous") -> None:
        if status_code != b"200":
            self.denied += 1
            if self.denied <= 5 or self.denied & (self.denied - 1) == 0:
                log.warning("refused a peer without an authorized CURVE key (#%d: %s)", self.denied,
                            status_text.decode(errors="replace"))
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


def secure_server(sock: zmq.Socket, keys: CurveKeys) -> None:
    public, secret = keys.server()
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.curve_server = True


def secure_client(sock: zmq.Socket, keys: CurveKeys) -> None:
    public, secret, server_public = keys.client()
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.curve_serverkey = server_public
