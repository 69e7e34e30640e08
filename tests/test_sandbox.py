"""The sandbox against programs that try to get out: network, fork bomb, memory, huge files, the run's
files, sleeping, printing gigabytes, killing their parent. Each is contained, reported with the right
``limit_hit`` or a non-zero exit, leaves no process behind, and this process lives on. Needs root (the
sandbox drops to a per-run uid); every run here is a real jail with real namespaces."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sandbox import Limits, Result, SandboxError, _cgroup, run_python
from sandbox.runner import GRACE_S, NAMESPACES_ENV, PYTHON_BINDS, WEAK_ENV

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox drops privileges: needs root")

ROOT = Path(__file__).resolve().parents[1]
SMALL = Limits(timeout_s=5, cpu_s=3, memory_mb=256, max_procs=16, file_mb=4, output_kb=16)
PRINT_UID = "import os, sys\nprint(os.getuid(), flush=True)\n"


def _uid_processes(uid: int) -> list[int]:
    """Pids of live (non-zombie) processes whose real uid is ``uid``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
        except (OSError, ValueError):
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "0").split()[0]) == uid and fields.get("State", "").split()[0] != "Z":
            found.append(int(entry.name))
    return found


def _assert_gone(result: Result) -> None:
    uid = int(result.stdout.split()[0])
    assert uid != 0
    for _ in range(50):  # the namespace's teardown is asynchronous to our reap of the jail
        if not _uid_processes(uid):
            return
        time.sleep(0.05)
    raise AssertionError(f"processes of the run's uid {uid} outlived it: {_uid_processes(uid)}")


def test_happy_path_stdin_files_and_isolation() -> None:
    code = "import helper, os\nprint(helper.shout(input()), os.getuid() != 0, os.getcwd())"
    helper = {"helper.py": "def shout(s):\n    return s.upper()\n"}
    result = run_python(code, stdin="hello\n", limits=SMALL, files=helper)
    assert result.ok, result
    assert result.stdout == "HELLO True /sandbox\n"
    assert result.isolation.keys() == {"network_namespace", "mount_namespace", "pid_namespace",
                                       "unprivileged_user", "memory_cgroup", "seccomp"}
    assert all(v for k, v in result.isolation.items() if k != "memory_cgroup")  # that one is best effort
    assert 0 < result.time_s < 5 and result.max_rss_mb > 1
    assert json.loads(json.dumps(result.to_json()))["stdout"] == result.stdout


def test_no_network_even_to_a_listening_local_socket() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
                            limits=SMALL)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody came
    assert result.exit_code == 1 and "Network is unreachable" in result.stderr


def test_no_user_namespace_keyring_or_vsock_but_threads_and_subprocesses_work() -> None:
    """The seccomp filter: a user namespace (where the program would be "root"), keyctl and an AF_VSOCK
    socket (not confined by the network namespace) are refused; threads (clone3 answers ENOSYS, glibc falls
    back to clone), fork and subprocess still work."""
    code = ("import ctypes, errno, os, socket, subprocess, threading\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.unshare(0x10000000), ctypes.get_errno())\n"  # CLONE_NEWUSER
            "print(libc.syscall(250 if os.uname().machine == 'x86_64' else 219, 0, -3, 0), ctypes.get_errno())\n"
            "try:\n    socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)\nexcept OSError as e:\n    print(e.errno)\n"
            "t = threading.Thread(target=print, args=('thread',))\nt.start()\nt.join()\n"
            "print(subprocess.run(['/bin/echo', 'child'], capture_output=True, text=True).stdout, end='')")
    result = run_python(code, limits=SMALL)
    if not result.isolation["seccomp"]:
        pytest.skip(f"no seccomp filter for {os.uname().machine}")
    assert result.ok, result
    assert result.stdout.splitlines() == ["-1 1", "-1 1", str(errno.EAFNOSUPPORT), "thread", "child"]


def test_fork_bomb_is_contained() -> None:
    result = run_python(PRINT_UID + "while True:\n    os.fork()", limits=SMALL)
    assert result.exit_code != 0 and result.limit_hit == "procs", result
    _assert_gone(result)


def test_memory_past_the_limit() -> None:
    result = run_python("x = bytearray(1 << 30)", limits=SMALL)
    assert result.exit_code == 1 and result.limit_hit == "memory", result


def test_processes_together_past_the_memory_cgroup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight processes of 100 MB each stay under RLIMIT_AS (128 MB) one by one; the run's cgroup stops them.
    Each run's cgroup is gone afterwards (other test workers' runs may have theirs meanwhile)."""
    seen: list[str] = []
    path_for = _cgroup.path_for

    def recording(jail_pid: int) -> str | None:
        path = path_for(jail_pid)
        if path is not None:
            seen.append(path)
        return path

    monkeypatch.setattr(_cgroup, "path_for", recording)
    code = ("import os, time\nkids = []\nfor i in range(8):\n    pid = os.fork()\n    if pid == 0:\n"
            "        x = b'x' * (100 << 20)\n        time.sleep(1)\n        os._exit(0)\n    kids.append(pid)\n"
            "print([os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) for k in kids])")
    result = run_python(code, limits=Limits(timeout_s=10, memory_mb=128, max_procs=16, file_mb=4))
    if not result.isolation["memory_cgroup"]:
        pytest.skip("no memory cgroup can be made on this host: memory is capped per process only")
    assert result.limit_hit == "memory" and "-9" in result.stdout, result
    killed = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", limits=SMALL)
    assert killed.limit_hit == "output"  # the jail was killed: the caller removes its cgroup
    assert len(seen) == 2 and not any(Path(p).exists() for p in seen), seen


@pytest.mark.parametrize("code", ["open('big', 'wb').write(b'x' * (64 << 20))",  # one file past file_mb
                                  "for i in range(64):\n    open(f'/tmp/{i}', 'wb').write(b'x' * (3 << 20))"])
def test_huge_files(code: str) -> None:  # the second fills the shared scratch tmpfs with files under file_mb
    result = run_python(code, limits=SMALL)
    assert result.exit_code == 1 and result.limit_hit == "file_size", result


def test_the_runs_files_keys_and_env_are_out_of_sight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secret.key"
    secret.write_text("hunter2")
    secret.chmod(0o644)
    monkeypatch.setenv("ASYNCRL_TEST_API_KEY", "hunter2")
    paths = [str(secret), str(ROOT / "pyproject.toml"), "/root/.bashrc", "/etc/shadow"]
    code = (f"import json, os\nfor p in {paths!r}:\n    try:\n        print(open(p).read())\n"
            f"    except OSError as e:\n        print('denied', type(e).__name__)\n"
            f"print(json.dumps({{'root': os.listdir('/root'), 'env': sorted(os.environ), 'me': os.getpid(),\n"
            f"                  'procs': [p for p in os.listdir('/proc') if p.isdigit()]}}))")
    result = run_python(code, limits=SMALL)
    assert result.ok, result
    assert "hunter2" not in result.stdout and "ASYNCRL_TEST_API_KEY" not in result.stdout
    assert result.stdout.count("denied FileNotFoundError") == len(paths)
    seen = json.loads(result.stdout.splitlines()[-1])
    assert all(any(p.startswith(f"/root/{name}") for p in PYTHON_BINDS) for name in seen["root"])
    assert seen["procs"] == [str(seen["me"])]  # a PID namespace, and hidepid=2 hides its root-owned PID 1


def test_sleep_forever_times_out() -> None:
    start = time.monotonic()
    result = run_python(PRINT_UID + "import time\ntime.sleep(1000)", limits=Limits(timeout_s=1))
    assert result.limit_hit == "timeout" and result.exit_code is None, result
    assert time.monotonic() - start < 1 + GRACE_S
    _assert_gone(result)


@pytest.mark.parametrize("code", ["while True:\n    pass",  # SIGXCPU at the soft limit
                                  "import signal as s\ns.signal(s.SIGXCPU, s.SIG_IGN)\nwhile True:\n    pass"])
def test_cpu_spin_hits_the_cpu_limit(code: str) -> None:  # the second ignores SIGXCPU: SIGKILL a second later
    result = run_python(code, limits=Limits(timeout_s=10, cpu_s=1))
    assert result.limit_hit == "cpu" and result.exit_code in (-signal.SIGXCPU, -signal.SIGKILL), result


def test_printing_gigabytes_is_cut_and_killed() -> None:
    start = time.monotonic()
    result = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", limits=SMALL)
    assert result.limit_hit == "output" and result.exit_code is None, result
    assert len(result.stdout) == SMALL.output_kb << 10
    assert time.monotonic() - start < 3


def test_killing_the_parent_and_everyone_fails() -> None:
    code = ("import os, signal\nfor pid in (os.getppid(), 1, -1):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
            "    except OSError as e:\n        print(pid, type(e).__name__)\nos.kill(os.getppid(), signal.SIGKILL)")
    result = run_python(code, limits=SMALL)
    assert result.exit_code == 1 and "PermissionError" in result.stderr, result
    assert result.stdout.split("\n")[:3] == ["1 PermissionError", "1 PermissionError", "-1 ProcessLookupError"]
    assert run_python("print('still here')", limits=SMALL).stdout == "still here\n"


def test_eight_concurrent_runs_and_a_fork_bomb_beside_them() -> None:
    """Each run has its own uid, so one run's fork bomb does not eat the others' process limit."""
    results: dict[int, Result] = {}

    def one(i: int) -> None:
        code = "import os\nwhile True:\n    os.fork()" if i == 0 else f"print(sum(range({i * 1000})))"
        results[i] = run_python(code, limits=SMALL)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results[0].limit_hit == "procs"
    for i in range(1, 8):
        assert results[i].ok and results[i].stdout == f"{sum(range(i * 1000))}\n", results[i]


def test_refuses_without_namespaces_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NAMESPACES_ENV, "none")
    with pytest.raises(SandboxError, match=WEAK_ENV):
        run_python("print(1)", limits=SMALL)


def test_weak_mode_without_pid_and_network_namespaces_still_kills_leftovers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NAMESPACES_ENV, "mount")
    monkeypatch.setenv(WEAK_ENV, "1")
    code = PRINT_UID + "import time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(1000)\n"
    result = run_python(code, limits=SMALL)
    assert result.ok, result
    namespaces = ("network_namespace", "mount_namespace", "pid_namespace", "unprivileged_user")
    assert {k: result.isolation[k] for k in namespaces} == {
        "network_namespace": False, "mount_namespace": True, "pid_namespace": False, "unprivileged_user": True}
    _assert_gone(result)
    result = run_python(code + "while True:\n    print('x' * 1000)", limits=SMALL)
    assert result.limit_hit == "output"
    _assert_gone(result)


def test_bad_input_is_the_callers_error() -> None:
    with pytest.raises(ValueError, match="Limits.timeout_s"):
        Limits(timeout_s=0)
    with pytest.raises(ValueError, match="relative path"):
        run_python("", files={"../escape.py": ""})


def test_cli_prints_the_json_result(tmp_path: Path) -> None:
    program, stdin = tmp_path / "p.py", tmp_path / "in.txt"
    program.write_text("print(input() * 2, flush=True)\nimport time\ntime.sleep(5)")
    stdin.write_text("ab\n")
    cli = [sys.executable, "-m", "cli.main", "sandbox", "run"]
    done = subprocess.run(cli + [str(program), "--stdin", str(stdin), "--timeout", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["stdout"] == "abab\n" and result["limit_hit"] == "timeout" and result["exit_code"] is None
    missing = subprocess.run(cli + [str(tmp_path / "nope.py")], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.py" in missing.stderr
