"""Rank 0 of a multi-rank learner tells the other ranks what to do next.

Only rank 0 talks to ZeroMQ (generators, reward workers) and the weight-sync group. The
other ranks hold their FSDP2 shards and follow: every command is broadcast over a gloo
group (CPU tensors, whatever the training backend) as a header ``[command, payload
bytes]`` and the payload as a uint8 tensor. A ``step`` payload is msgpack holding the
learner version and each scored group as Arrow IPC bytes, the same encoding as on the
wire; nothing is pickled.

    # rank 0                                   # ranks 1..K-1
    ranks.send("step", step_payload(...))      cmd, payload = ranks.recv()
"""

from __future__ import annotations

from datetime import timedelta

import msgpack
import pyarrow as pa
import torch
import torch.distributed as dist

from asyncrl import schema

COMMANDS = ("step", "sync", "save", "checkpoint", "stop")


class RankChannel:
    def __init__(self, timeout_s: float = 3600.0) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        # a separate gloo group: commands are small CPU tensors even when training uses NCCL;
        # the timeout bounds how long followers wait for rank 0 between commands
        self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s)) if self.world > 1 else None

    def send(self, command: str, payload: bytes = b"") -> None:
        """Rank 0: broadcast one command to the other ranks (no-op with one rank)."""
        if self.group is None:
            return
        header = torch.tensor([COMMANDS.index(command), len(payload)], dtype=torch.int64)
        dist.broadcast(header, 0, group=self.group)
        if payload:
            dist.broadcast(torch.frombuffer(bytearray(payload), dtype=torch.uint8), 0, group=self.group)

    def recv(self) -> tuple[str, bytes]:
        """Ranks 1..K-1: the next command from rank 0."""
        assert self.group is not None
        header = torch.zeros(2, dtype=torch.int64)
        dist.broadcast(header, 0, group=self.group)
        data = torch.empty(int(header[1]), dtype=torch.uint8)
        if data.numel():
            dist.broadcast(data, 0, group=self.group)
        return COMMANDS[int(header[0])], data.numpy().tobytes()


def step_payload(groups: list[pa.RecordBatch], version: int) -> bytes:
    return msgpack.packb({"version": version, "groups": [schema.encode_batch(g) for g in groups]})


def parse_step(payload: bytes) -> tuple[list[pa.RecordBatch], int]:
    msg = msgpack.unpackb(payload)
    return [schema.decode_batch(g) for g in msg["groups"]], int(msg["version"])
