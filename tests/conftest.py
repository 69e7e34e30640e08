"""Shared fixtures: tiny models and configs made in the test, free ports, process cleanup."""

from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


_given: set[int] = set()


def free_port() -> int:
    """A bindable loopback port below Linux's ephemeral range (32768+), never handed out twice.

    Ports from the ephemeral range can be taken between this check and the real bind by any
    outgoing connection or by vLLM's own internal sockets (seen as a flaky EADDRINUSE).
    """
    rng = random.Random(os.getpid() ^ int(time.time() * 1e6))
    for _ in range(1000):
        port = rng.randrange(20000, 32000)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError("no free port in 20000-32000")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cli.model.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")
