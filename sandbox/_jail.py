"""The sandbox's own processes. Stdlib only: :mod:`sandbox.runner` starts this file with the base
interpreter (``python -I -S``, this directory appended to ``sys.path``), as root, with the run spec
(marshal) on stdin and a status pipe whose fd number the spec names. Three processes, so that the
program is never PID 1 and never root:

* outer: reads the spec, ``unshare``\\ s the network, PID, IPC and UTS namespaces, makes the run's memory
  cgroup (:mod:`_cgroup`), forks the inner process, moves it into the cgroup and waits for it, then
  reports OOM kills. It stays outside the new PID and mount namespaces, so the caller can kill it.
* inner: PID 1 of the new PID namespace, still root. Unshares the mount namespace (``pivot_root`` moves
  the root of every process in it, so the outer one must not share it), builds the minimal file tree
  (:mod:`_rootfs`), forks the program, reaps every child, enforces the wall-clock timeout, writes its
  status lines and exits; the kernel then kills whatever the program left behind in the namespace.
* program: drops to the run's own uid (no groups, no new privileges), writes the input files into its
  working directory, sets the rlimits and a seccomp filter (:mod:`_seccomp`) last and ``exec``\\ s Python
  on ``main.py``.

Where the OS refuses a namespace, the spec's ``weak_ok`` decides: refuse (status ``error``), or go on and
report it in ``isolation`` (then leftovers are killed by uid, see :func:`_kill_uid`).
"""

from __future__ import annotations

import ctypes
import marshal
import math
import os
import resource
import select
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox import _cgroup, _rootfs, _seccomp
else:  # started as a script, without the package (and its imports) on the path
    import _cgroup
    import _rootfs
    import _seccomp

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
NAMESPACES = {"network_namespace": CLONE_NEWNET, "mount_namespace": CLONE_NEWNS, "pid_namespace": CLONE_NEWPID}
EVERY = {**NAMESPACES, "ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS}
OUTER = ("network_namespace", "pid_namespace", "ipc", "uts")  # the mount namespace is the inner one's alone
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
SYS_KEYCTL, KEYCTL_JOIN_SESSION_KEYRING = {"x86_64": 250, "aarch64": 219}, 1
WORKDIR = "/sandbox"

libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    if libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def _unshare(spec: dict[str, Any], names: tuple[str, ...]) -> dict[str, bool]:
    """Unshare the named namespaces (those the spec allows: a test knob) at once, else each alone; which took."""
    wanted = {name: EVERY[name] for name in names if name in spec["namespaces"]}
    if wanted and libc.unshare(sum(wanted.values())) == 0:
        return {name: name in wanted for name in names}
    return {name: name in wanted and libc.unshare(EVERY[name]) == 0 for name in names}


def _refusal(spec: dict[str, Any], isolation: dict[str, bool]) -> str | None:
    missing = [name for name in NAMESPACES if not isolation[name]]
    if not missing or spec["weak_ok"]:
        return None
    return (f"the OS refused {', '.join(missing)} (are we root, outside a seccomp filter that blocks "
            "unshare?); set ASYNCRL_SANDBOX_WEAK=1 to run with less isolation anyway")


STATUS_FD = -1  # set from the spec by main()


def _status(payload: dict[str, Any]) -> None:
    """One line (a Python literal, read with ``ast.literal_eval``) on the status pipe; the caller merges the
    lines, so a run killed early still leaves some."""
    os.write(STATUS_FD, repr(payload).encode() + b"\n")


def _kill_uid(uid: int) -> None:
    """Kill every process of ``uid`` (the run's own uid): ``kill(-1)`` from a process with that uid."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _oom_score_adj(value: str) -> None:
    """Best effort: lowering it needs CAP_SYS_RESOURCE, which containers often drop."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(value)
    except OSError:
        pass


def _limit(resource_id: int, value: int) -> None:
    resource.setrlimit(resource_id, (value, value))


def _exec_program(spec: dict[str, Any], err_w: int, stdin_fd: int, workdir: str) -> None:
    """In the program's process: drop privileges, write the inputs, set the limits, exec."""
    limits, uid = spec["limits"], spec["uid"]
    os.dup2(stdin_fd, 0)
    _oom_score_adj("0")  # the jail may be exempt from the OOM killer; the program is not
    if spec["drop"]:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    keyctl = SYS_KEYCTL.get(os.uname().machine)
    if keyctl is not None:  # a fresh session keyring: not the caller's keys
        libc.syscall(keyctl, KEYCTL_JOIN_SESSION_KEYRING, None)
    os.chdir(workdir)
    for name, text in {**spec["files"], "main.py": spec["code"]}.items():
        os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
        with open(name, "w", encoding="utf-8", errors="surrogatepass") as f:  # a lone surrogate: SyntaxError
            f.write(text)
    os.closerange(3, err_w)  # the status pipe among them
    os.closerange(err_w + 1, 65536)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
           "LC_ALL": "C.UTF-8", "USER": "sandbox", "LOGNAME": "sandbox"}
    cpu = max(1, math.ceil(limits["cpu_s"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # soft: SIGXCPU; one second later SIGKILL
    _limit(resource.RLIMIT_FSIZE, limits["file_mb"] << 20)
    _limit(resource.RLIMIT_NPROC, limits["max_procs"])
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_NOFILE, 1024)
    _limit(resource.RLIMIT_AS, limits["memory_mb"] << 20)
    _seccomp.install(libc)  # last: from here on no new user namespaces, keyrings, bpf (see _seccomp)
    python = spec["python"]
    os.execve(python, [python, "-B", "-E", "-s", "main.py"], env)


def _fork_program(spec: dict[str, Any], stdin_fd: int, workdir: str) -> tuple[int, float]:
    """Fork the program; return its pid and start time once it has exec'd (or raise its setup error)."""
    err_r, err_w = os.pipe()  # close-on-exec: EOF without data means the exec happened
    pid = os.fork()
    if pid == 0:
        try:
            os.close(err_r)
            _exec_program(spec, err_w, stdin_fd, workdir)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller as a sandbox failure
            os.write(err_w, f"{type(exc).__name__}: {exc}".encode()[:4000])
        finally:
            os._exit(127)
    start = time.monotonic()
    os.close(err_w)
    with os.fdopen(err_r, "rb") as f:
        error = f.read().decode(errors="replace")
    if error:
        os.waitpid(pid, 0)
        raise RuntimeError(f"program setup failed: {error}")
    return pid, start


def _wait(pid: int, start: float, timeout_s: float) -> dict[str, Any]:
    """Reap children until the program exits or the timeout passes; the program's exit status and usage."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    deadline = start + timeout_s
    while True:
        while True:  # reap everything that has exited (orphans are ours too: PID 1 or subreaper)
            try:
                child, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                child = 0
            if child == 0:
                break
            if child == pid:
                code = os.waitstatus_to_exitcode(status)
                return {"exit_code": code, "timeout": False, "time_s": time.monotonic() - start,
                        "cpu_s": usage.ru_utime + usage.ru_stime, "max_rss_kb": usage.ru_maxrss}
        left = deadline - time.monotonic()
        if left <= 0:
            return {"exit_code": None, "timeout": True, "time_s": time.monotonic() - start,
                    "cpu_s": None, "max_rss_kb": None}
        readable, _, _ = select.select([wake_r], [], [], left)
        if readable:
            os.read(wake_r, 4096)


def _inner(spec: dict[str, Any], isolation: dict[str, bool], stdin_fd: int, go_r: int) -> None:
    """The namespace's PID 1: set up the file tree, run the program, report, exit (which kills the rest)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    isolation = {**isolation, **_unshare(spec, ("mount_namespace",))}
    refusal = _refusal(spec, isolation)
    if refusal:
        _status({"error": refusal, "isolation": isolation})
        raise SystemExit(1)
    workdir = WORKDIR
    try:
        if isolation["uts"]:
            libc.sethostname(b"sandbox", 7)
        if isolation["mount_namespace"]:
            _rootfs.build(spec, WORKDIR)
        else:
            workdir = _rootfs.host_workdir(spec)
        isolation["memory_cgroup"] = os.read(go_r, 1) == b"1"  # the outer one has moved us (or failed to)
        _status({"isolation": isolation})
        pid, start = _fork_program(spec, stdin_fd, workdir)
        result = _wait(pid, start, spec["limits"]["timeout_s"])
    except Exception as exc:  # noqa: BLE001 - a set-up failure goes back to the caller, never to stdout
        _status({"error": f"{type(exc).__name__}: {exc}", "isolation": isolation})
        raise SystemExit(1) from None
    finally:
        if not isolation["pid_namespace"]:  # no namespace to tear down: kill the run's uid instead
            if spec["drop"]:
                _kill_uid(spec["uid"])
            if workdir != WORKDIR:
                _rootfs.remove_host_workdir(workdir)
    _status({**result, "isolation": isolation})


def main() -> None:
    global STATUS_FD
    spec = marshal.loads(sys.stdin.buffer.read())  # from our caller, marshal because it imports in no time
    STATUS_FD = spec["status_fd"]
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    stdin_fd = os.memfd_create("stdin")
    os.write(stdin_fd, spec["stdin"].encode(errors="surrogatepass"))
    os.lseek(stdin_fd, 0, os.SEEK_SET)
    spec["drop"] = os.geteuid() == 0
    spec["uid"] = spec["uid_base"] + os.getpid()  # unique while we live: RLIMIT_NPROC counts this run only
    isolation = _unshare(spec, OUTER)
    isolation["unprivileged_user"] = spec["drop"]
    isolation["seccomp"] = _seccomp.program(os.uname().machine) is not None
    _oom_score_adj("-1000")  # a run over its cgroup limit should lose a program process, not the jail
    cgroup = _cgroup.create(spec["limits"]["memory_mb"] + spec["scratch_mb"])
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(go_w)
            _inner(spec, isolation, stdin_fd, go_r)
        finally:
            os._exit(0)
    os.close(go_r)
    # the migration waits for an RCU grace period (~10 ms on cgroup v1): the inner one builds its tree meanwhile
    joined = cgroup is not None and _cgroup.add(cgroup, pid)
    try:  # noqa: SIM105 - contextlib would cost the jail's start-up an import
        os.write(go_w, b"1" if joined else b"0")
    except BrokenPipeError:  # the inner one gave up before (a refused namespace): its status says why
        pass
    os.close(go_w)
    _, status = os.waitpid(pid, 0)
    if cgroup is not None and _cgroup.oom_killed(cgroup):  # the caller removes the cgroup after we exit
        _status({"oom_kill": True})
    raise SystemExit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
