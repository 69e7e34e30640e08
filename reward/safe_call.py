"""Run reward functions in a child process, so a crash, hang or bad value scores 0.

:class:`SafeRewardCaller` keeps one worker process (``spawn`` context) and sends it
requests over a pipe. Functions are named, not pickled: a registry name from
:mod:`reward.functions` or ``"package.module:function"``, which the child imports.

Each item must finish within ``timeout_s`` of the previous result. A function that
raises, returns something other than a finite number (or a veRL-style dict with a
``"score"``), or runs past the timeout scores ``(0.0, "<error>")``; on a timeout the
child is killed and a fresh one started for the remaining items. The caller never raises.

Requests and results cross the pipe as msgpack bytes (nothing is pickled), and the child's
Python-level stdout/stderr are capped (:data:`OUTPUT_LIMIT` bytes, then dropped with one
notice), so a function printing gigabytes cannot flood the worker's logs.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import numbers
import signal
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

import msgpack

Item = tuple[str, str, str, str, dict[str, Any]]  # fn_name, data_source, response, ground_truth, extra_info
Result = tuple[float, str | None]
OUTPUT_LIMIT = 64 * 1024


class _CappedStream:
    """A text stream forwarding the first ``limit`` characters, then dropping the rest."""

    def __init__(self, target: Any, limit: int) -> None:
        self.target, self.left, self.noted = target, limit, False

    def write(self, text: str) -> int:
        if self.left > 0:
            self.target.write(text[:self.left])
            self.left -= len(text)
        elif not self.noted:
            self.noted = True
            self.target.write(f"\n[reward function output beyond {OUTPUT_LIMIT} characters dropped]\n")
        return len(text)

    def flush(self) -> None:
        self.target.flush()


def _send(conn: Connection, obj: Any) -> None:
    conn.send_bytes(msgpack.packb(obj))


def _recv(conn: Connection) -> Any:
    return msgpack.unpackb(conn.recv_bytes(), strict_map_key=False)


def _score_one(cache: dict[str, Any], item: Item) -> Result:
    from reward.functions import get_reward_fn

    fn_name, data_source, response, ground_truth, extra_info = item
    try:
        if fn_name not in cache:
            cache[fn_name] = get_reward_fn(fn_name)
        value = cache[fn_name](data_source, response, ground_truth, extra_info)
    except BaseException as exc:  # noqa: BLE001 - anything a user function does is a score of 0
        return 0.0, f"{fn_name} raised {type(exc).__name__}: {exc}"
    if isinstance(value, dict) and "score" in value:
        value = value["score"]
    if not isinstance(value, numbers.Real):
        return 0.0, f"{fn_name} returned {type(value).__name__} {value!r:.80}, expected a float"
    if not math.isfinite(value):
        return 0.0, f"{fn_name} returned non-finite {value!r}"
    return float(value), None


def _child_main(conn: Connection) -> None:
    """Worker loop: receive a list of items, send back one result per item as it finishes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    sys.stdout = _CappedStream(sys.stdout, OUTPUT_LIMIT)
    sys.stderr = _CappedStream(sys.stderr, OUTPUT_LIMIT)
    import reward.functions  # noqa: F401 - import before "ready" so start-up is not timed

    cache: dict[str, Any] = {}
    _send(conn, "ready")
    while True:
        try:
            items = _recv(conn)
        except (EOFError, OSError):
            return
        if items is None:
            return
        for item in items:
            _send(conn, list(_score_one(cache, tuple(item))))


class SafeRewardCaller:
    """Score responses in an isolated child process with a per-item timeout."""

    def __init__(self, timeout_s: float = 5.0, start_timeout_s: float = 60.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s} must be > 0")
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self.restarts = 0

    def __enter__(self) -> SafeRewardCaller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_child_main, args=(child,), name="reward-worker", daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        if not parent.poll(self.start_timeout_s) or _recv(parent) != "ready":
            self._kill()
            raise RuntimeError(f"reward worker did not start within {self.start_timeout_s} s")

    def _kill(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
        self._proc, self._conn = None, None

    def _receive(self, fn_name: str) -> Result:
        """The next result, or an error after killing a child that hung or died."""
        conn = self._conn
        assert conn is not None, "_receive() runs after _start()"
        try:
            if conn.poll(self.timeout_s):
                score, error = _recv(conn)
                return float(score), error
            error = f"{fn_name} timed out after {self.timeout_s} s"
        except (EOFError, OSError):
            self._proc.join(1)
            error = f"reward worker died (exit code {self._proc.exitcode}) while running {fn_name}"
        self._kill()
        self.restarts += 1
        return 0.0, error

    def _run(self, items: list[Item]) -> list[Result]:
        results: list[Result] = []
        while len(results) < len(items):
            pending = items[len(results) :]
            try:
                if self._proc is None or not self._proc.is_alive():
                    self._kill()
                    self._start()
            except Exception as exc:  # noqa: BLE001 - reported per item instead
                return results + [(0.0, f"reward worker could not start: {exc}")] * len(pending)
            conn = self._conn
            assert conn is not None, "started above"
            try:
                _send(conn, [list(item) for item in pending])
            except Exception as exc:  # noqa: BLE001 - e.g. extra_info msgpack cannot encode
                self._kill()
                if len(pending) == 1:
                    results.append((0.0, f"could not send item to reward worker: {type(exc).__name__}: {exc}"))
                else:  # find the bad item: send the rest one by one
                    for item in pending:
                        results.extend(self._run([item]))
                continue
            for item in pending:
                results.append(self._receive(item[0]))
                if self._proc is None:  # killed after a timeout or death: resend the rest
                    break
        return results

    def score(
        self, fn_name: str, data_source: str, response: str, ground_truth: str, extra_info: dict[str, Any]
    ) -> Result:
        """Score one response; returns ``(reward, None)`` or ``(0.0, error_text)``."""
        return self.score_batch([(fn_name, data_source, response, ground_truth, extra_info)])[0]

    def score_batch(self, items: list[Item]) -> list[Result]:
        """Score many items in one round-trip; one result per item, in order."""
        items = list(items)
        with self._lock:
            try:
                return self._run(items)
            except Exception as exc:  # noqa: BLE001 - never raise to the reward worker loop
                self._kill()
                return [(0.0, f"reward caller failed: {type(exc).__name__}: {exc}")] * len(items)

    def close(self) -> None:
        """Stop the child process (idempotent)."""
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(OSError, ValueError):
                    _send(self._conn, None)
            if self._proc is not None:
                self._proc.join(1)
            self._kill()
