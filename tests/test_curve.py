"""CURVE: authorized clients get through encrypted, anyone else is refused and counted."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq

from asyncrl.curve import Authenticator, CurveError, CurveKeys, create_keys, secure_client, secure_server
from tests.conftest import free_port


def test_only_authorized_clients_get_through(tmp_path: Path) -> None:
    good = CurveKeys(create_keys(tmp_path / "keys"))
    other = create_keys(tmp_path / "other")  # a different client key, same server public key copied in
    (other / "server.key").write_bytes((tmp_path / "keys" / "server.key").read_bytes())
    ctx = zmq.Context()
    auth = Authenticator(ctx, good.directory / "authorized")
    try:
        pull = ctx.socket(zmq.PULL)
        secure_server(pull, good)
        addr = f"tcp://127.0.0.1:{free_port()}"
        pull.bind(addr)
        senders = {}
        for name, keys in (("intruder", CurveKeys(other)), ("plain", None), ("good", good)):
            s = ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.LINGER, 0)
            if keys is not None:
                secure_client(s, keys)
            s.connect(addr)
            s.send(name.encode())
            senders[name] = s
        got = []
        while pull.poll(3000):
            got.append(pull.recv())
        assert got == [b"good"]
        assert auth.denied >= 1  # the intruder's handshake (the plain one fails the CURVE mechanism itself)
    finally:
        auth.stop()
        ctx.destroy(linger=0)


def test_missing_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CurveError, match="server.key_secret not found"):
        CurveKeys(tmp_path).server()
