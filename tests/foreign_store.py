"""A foreign process on another host that reaches the weight-sync store's port (tests only).

It knows the store address and asyncrl's source, not the run's secret namespace. It writes
every key an older, unnamespaced asyncrl used (abort each epoch, fake joins) and tries to take
rank 0 of the unnamespaced groups to offer its own weights; then prints a JSON summary::

    python -m tests.foreign_store HOST PORT
"""

from __future__ import annotations

import json
import socket
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist


def main(host: str, port: int) -> None:
    deadline = time.monotonic() + 300
    while True:  # the learner's store comes up after the model loads
        try:
            socket.create_connection((host, port), timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    store = dist.TCPStore(host, port, None, is_master=False, timeout=timedelta(seconds=10), use_libuv=True)
    written = 0
    for epoch in range(8):
        store.set(f"asyncrl_abort/{epoch}", "1")
        written += 1
        for rank in range(4):
            store.set(f"asyncrl_joined/{epoch}/{rank}", "1")
            written += 1
    takeovers = []
    for epoch in range(2):  # offer weights as rank 0 of a group nobody else is in
        try:
            pg = dist.ProcessGroupGloo(dist.PrefixStore(f"asyncrl_weight_sync/{epoch}", store), 0, 2,
                                       timedelta(seconds=5))
            pg.broadcast([torch.full((1024,), 7.0)]).wait()
            takeovers.append(f"epoch {epoch}: broadcast went through")
        except Exception as e:  # noqa: BLE001 - expected: nobody joins a foreign group
            takeovers.append(f"epoch {epoch}: {type(e).__name__}")
    print(json.dumps({"connected": True, "keys_written": written, "takeovers": takeovers}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
