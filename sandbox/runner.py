""":func:`run_python`: the caller's side of a sandboxed run.

It starts ``_jail.py`` (which builds the namespaces, the file tree and the unprivileged program process),
hands it the spec on stdin, reads stdout and stderr with a cap, and turns the jail's status lines into a
:class:`~sandbox.limits.Result`. It keeps no shared state, so worker threads may call it concurrently.

The wall-clock timeout is enforced twice: by the jail (from the program's start, exactly ``timeout_s``)
and here as a backstop (``timeout_s + GRACE_S``) in case the jail itself hangs. Output beyond the cap, or
the backstop, kills the jail's process group; with a PID namespace that takes the whole run with it, and
the run's uid is killed as well for hosts without one.
"""

from __future__ import annotations

import ast
import contextlib
import marshal
import os
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from sandbox import _cgroup
from sandbox.limits import DEFAULT_LIMITS, ISOLATION_KEYS, Limits, Result

UID_BASE = 1_500_000_000
"""The run's uid is ``UID_BASE`` + the jail's pid: unique among live runs, so RLIMIT_NPROC counts one run."""
GRACE_S = 5.0
WEAK_ENV = "ASYNCRL_SANDBOX_WEAK"
"""``1``: run even where the OS refuses a namespace (reported in ``isolation``); default: refuse."""
NAMESPACES_ENV = "ASYNCRL_SANDBOX_NAMESPACES"
"""Tests only: a comma list of the namespaces to try (``network,mount,pid,ipc,uts``), ``none`` for none,
to exercise the weak paths on a host that allows them all. Unset: try all."""
ALL_NAMESPACES = ("network", "mount", "pid", "ipc", "uts")
STDERR_MARKERS = (  # last lines of a program that died of a limit it could not see coming
    ("memory", ("MemoryError", "Cannot allocate memory")),
    ("procs", ("Resource temporarily unavailable", "can't start new thread")),
    ("file_size", ("File too large", "No space left on device")),
)
JAIL_DIR = Path(__file__).resolve().parent
BOOT = "import sys; sys.path.append(sys.argv[1]); import _jail; _jail.main()"
PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
PYTHON_BINDS = sorted({os.path.realpath(sys.base_prefix), os.path.dirname(PYTHON)})
_BASE = {"base": os.path.realpath(sys.base_prefix), "platbase": os.path.realpath(sys.base_prefix)}
SITE_PACKAGES = sorted({sysconfig.get_path(kind, vars=_BASE) for kind in ("purelib", "platlib")})


class SandboxError(RuntimeError):
    """The sandbox itself could not run (namespaces refused, set-up failed): never the program's doing."""


def _utf8(text: str) -> bytes:
    return text.encode(errors="surrogatepass")  # a lone surrogate is the program's problem, not ours


def _check_files(files: dict[str, str], limits: Limits) -> None:
    for name, text in files.items():
        parts = Path(name).parts
        if not name or Path(name).is_absolute() or ".." in parts or "\0" in name or parts == ("main.py",):
            raise ValueError(f"sandbox file name {name!r} must be a relative path inside the working dir "
                             "(no '..', not main.py)")
        if len(_utf8(text)) > limits.file_mb << 20:
            raise ValueError(f"sandbox file {name!r} is larger than Limits.file_mb={limits.file_mb}")


def _namespaces() -> list[str]:
    names = os.environ.get(NAMESPACES_ENV, ",".join(ALL_NAMESPACES)).split(",")
    return [n if n in ("ipc", "uts") else f"{n}_namespace" for n in names if n in ALL_NAMESPACES]


def _spec(code: str, stdin: str, limits: Limits, files: dict[str, str], status_fd: int) -> bytes:
    size = sum(len(_utf8(text)) + len(name) for name, text in files.items()) + len(_utf8(code))
    return marshal.dumps({
        "code": code, "stdin": stdin, "files": files, "limits": vars(limits), "status_fd": status_fd,
        "uid_base": UID_BASE, "python": PYTHON, "binds": PYTHON_BINDS, "hide": SITE_PACKAGES,
        "scratch_mb": 4 * limits.file_mb + (size >> 20) + 1,
        "namespaces": _namespaces(),
        "weak_ok": os.environ.get(WEAK_ENV, "0") == "1",
    })


def _collect(proc: subprocess.Popen[bytes], cap: int, deadline: float) -> tuple[bytes, bytes, str | None]:
    """Read stdout and stderr until both close; stop early at ``cap`` bytes of either or at ``deadline``."""
    assert proc.stdout is not None and proc.stderr is not None, "started with pipes"
    bufs: dict[IO[bytes], bytearray] = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    hit = None
    with selectors.DefaultSelector() as sel:
        for stream in bufs:
            sel.register(stream, selectors.EVENT_READ)
        while sel.get_map() and hit is None:
            left = deadline - time.monotonic()
            if left <= 0:
                hit = "timeout"
                break
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.fileobj]  # type: ignore[index]
                buf += chunk[: cap + 1 - len(buf)]
                if len(buf) > cap:
                    hit = "output"
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), hit


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the jail's process group: its inner process is the PID namespace's init, so the run dies too."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.kill()
    proc.wait()


def _kill_uid(uid: int) -> None:
    """Without a PID namespace: ``kill -KILL -1`` as the run's uid kills every process of that uid."""
    kill = shutil.which("kill", path="/usr/bin:/bin")
    if kill is not None and os.geteuid() == 0:
        subprocess.run([kill, "-KILL", "-1"], user=uid, group=uid, extra_groups=[], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _read_status(fd: int) -> dict[str, Any]:
    """Merge the jail's status lines, Python literals (later lines win)."""
    os.set_blocking(fd, False)
    raw = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 1 << 16):
            raw += chunk
    status: dict[str, Any] = {}
    for line in raw.splitlines():
        with contextlib.suppress(ValueError, SyntaxError):
            status.update(ast.literal_eval(line.decode()))
    return status


def _classify(status: dict[str, Any], hit: str | None, stderr: str, limits: Limits) -> str | None:
    """Which limit ended the run: ours first (kill reasons), then signals, then the program's last words."""
    if hit is not None:
        return hit
    if status.get("timeout"):
        return "timeout"
    if status.get("oom_kill"):  # the run's processes together went past the memory cgroup's limit
        return "memory"
    code = status.get("exit_code")
    if code == -signal.SIGXCPU or (code == -signal.SIGKILL and (status.get("cpu_s") or 0) >= limits.cpu_s):
        return "cpu"
    if code == -signal.SIGXFSZ:
        return "file_size"
    if code:
        tail = stderr[-2000:]
        for name, markers in STDERR_MARKERS:
            if any(marker in tail for marker in markers):
                return name
    return None


def _start(spec_of: Callable[[int], bytes]) -> tuple[subprocess.Popen[bytes], int]:
    """Start the jail and hand it the spec (built first: a bad spec must not leave a jail waiting)."""
    status_r, status_w = os.pipe()
    try:
        spec = spec_of(status_w)
        proc = subprocess.Popen([PYTHON, "-I", "-S", "-c", BOOT, str(JAIL_DIR)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(status_w,),
                                start_new_session=True)
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)
    assert proc.stdin is not None, "started with a pipe"
    with contextlib.suppress(BrokenPipeError):  # a jail that died at once is reported below
        proc.stdin.write(spec)
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    return proc, status_r


def run_python(code: str, *, stdin: str = "", limits: Limits = DEFAULT_LIMITS,
               files: dict[str, str] | None = None) -> Result:
    """Run ``code`` as ``main.py`` in a fresh sandbox (``files`` beside it, ``stdin`` on its stdin); block until
    it ends. Whatever the program does is reported in the Result; :class:`SandboxError` means the sandbox
    itself could not run, ``ValueError`` a bad file name."""
    files = dict(files or {})
    _check_files(files, limits)
    started = time.monotonic()
    proc, status_fd = _start(lambda fd: _spec(code, stdin, limits, files, fd))
    try:
        out, err, hit = _collect(proc, limits.output_kb << 10, started + limits.timeout_s + GRACE_S)
        if hit is not None:
            _kill(proc)
        else:
            proc.wait()
        status = _read_status(status_fd)
        if hit is not None and not status.get("isolation", {}).get("pid_namespace"):
            _kill_uid(UID_BASE + proc.pid)
        cgroup = _cgroup.path_for(proc.pid)
        if cgroup is not None and os.path.isdir(cgroup):  # the jail has exited: empty, or emptying after a kill
            _cgroup.remove(cgroup)
    finally:
        os.close(status_fd)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    cap = limits.output_kb << 10
    stdout, stderr = (b[:cap].decode(errors="replace") for b in (out, err))
    if "error" in status or (hit is None and "exit_code" not in status):
        raise SandboxError(status.get("error") or f"sandbox jail exited {proc.returncode} without a status: "
                                                  f"{stderr[-2000:]}")
    isolation = {key: bool(status.get("isolation", {}).get(key)) for key in ISOLATION_KEYS}
    return Result(exit_code=None if hit else status.get("exit_code"), stdout=stdout, stderr=stderr,
                  time_s=round(status.get("time_s") or time.monotonic() - started, 4),
                  max_rss_mb=round((status.get("max_rss_kb") or 0) / 1024, 2),
                  limit_hit=_classify(status, hit, stderr, limits), isolation=isolation)


def preflight(what: str) -> None:
    """Run a one-line program in the sandbox; raise ConfigError (exit 2) naming ``what`` (the config
    key that needs the sandbox) when it cannot run here, so a worker fails at start and not on
    every sample."""
    from asyncrl.config_base import ConfigError

    try:
        res = run_python("print(1)", limits=Limits(timeout_s=10.0))
    except SandboxError as exc:
        raise ConfigError(f"{what} runs untrusted code in the sandbox, which cannot start on this machine: "
                          f"{exc} (docs/sandbox.md)") from exc
    if res.exit_code != 0 or res.stdout.strip() != "1":
        raise ConfigError(f"{what} runs untrusted code in the sandbox, whose test program failed here: "
                          f"exit {res.exit_code}, limit {res.limit_hit}, stderr {res.stderr[-500:]!r} "
                          "(docs/sandbox.md)")
