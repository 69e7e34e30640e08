"""The program's view of the file system (stdlib only; runs as root inside the new mount namespace).

:func:`build` makes a fresh tmpfs the root (``pivot_root``) holding only:

* read-only, nosuid, nodev binds of ``/usr`` (and the ``/bin``, ``/lib*`` links or dirs beside it) and of
  the Python install the program runs with (which may live under ``/root``: only that prefix is bound),
  with an empty read-only tmpfs over its ``site-packages``: the program gets the standard library only;
* ``/etc`` with ``ld.so.cache``, ``localtime`` and a two-line ``passwd``/``group`` naming the run's uid;
* ``/dev/{null,zero,full,random,urandom}`` bound from the host, and the usual ``/dev/fd`` links;
* ``/sandbox`` (the working directory, owned by the run's uid), ``/tmp`` and ``/dev/shm``: three views of
  ONE tmpfs of ``scratch_mb``, so everything the program writes is capped together;
* a fresh ``/proc`` (``hidepid=2``), mounted by the caller after this returns.

Nothing else exists: not ``/work``, ``/root``, ``/home``, the run directory, ``/tmp`` of the host, keys.
Without a mount namespace :func:`host_workdir` only makes a private directory on the host (weak mode).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime")
DEVICES = ("null", "zero", "full", "random", "urandom")
ROOT_MOUNT = "/tmp"  # where the new root is assembled; only this namespace sees what is mounted there

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _enc(value: str | None) -> bytes | None:
    return value.encode() if value is not None else None


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(libc.mount(_enc(source), _enc(target), _enc(fstype), ctypes.c_ulong(flags), _enc(data)),
           f"mount {source} on {target}")


def _bind(source: str, target: str, flags: int) -> None:
    """Bind ``source`` at ``target`` (created like it), then remount the bind with ``flags``."""
    if os.path.isdir(source):
        os.makedirs(target, mode=0o755, exist_ok=True)
        mount(source, target, None, MS_BIND | MS_REC)
    else:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        open(target, "w").close()
        mount(source, target, None, MS_BIND)
    mount(None, target, None, MS_BIND | MS_REMOUNT | flags)


def _bind_system(root: str, path: str) -> None:
    target = root + path
    if os.path.islink(path):  # merged /usr: /bin -> usr/bin
        if not os.path.lexists(target):
            os.symlink(os.readlink(path), target)
    elif os.path.exists(path) and not os.path.exists(target):
        _bind(path, target, MS_RDONLY | MS_NOSUID | MS_NODEV)


def _scratch(root: str, spec: dict[str, Any], workdir: str) -> None:
    """One size-capped tmpfs seen as the working dir, /tmp and /dev/shm."""
    hidden = root + "/.scratch"
    os.mkdir(hidden)
    mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['scratch_mb']}m,nr_inodes=4096,mode=755")
    os.mkdir(hidden + "/work", 0o700)
    os.chown(hidden + "/work", spec["uid"], spec["uid"])
    os.mkdir(hidden + "/tmp")
    os.chmod(hidden + "/tmp", 0o1777)
    for source, target in (("work", workdir), ("tmp", "/tmp"), ("tmp", "/dev/shm")):
        os.makedirs(root + target, exist_ok=True)
        mount(f"{hidden}/{source}", root + target, None, MS_BIND)
    _check(libc.umount2(hidden.encode(), MNT_DETACH), "umount scratch")
    os.rmdir(hidden)


def _etc_and_dev(root: str, uid: int, workdir: str) -> None:
    os.makedirs(root + "/etc", mode=0o755)
    for path in ETC_FILES:
        if os.path.exists(path):
            _bind(os.path.realpath(path), root + path, MS_RDONLY | MS_NOSUID | MS_NODEV)
    with open(root + "/etc/passwd", "w") as f:
        f.write(f"root:x:0:0::/:/bin/false\nsandbox:x:{uid}:{uid}::{workdir}:/bin/false\n")
    with open(root + "/etc/group", "w") as f:
        f.write(f"root:x:0:\nsandbox:x:{uid}:\n")
    os.makedirs(root + "/dev", mode=0o755)
    for name in DEVICES:
        _bind(f"/dev/{name}", f"{root}/dev/{name}", MS_NOSUID)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")


def _pivot(root: str) -> None:
    """Make ``root`` the root and detach the old one (``pivot_root(".", ".")`` as runc does)."""
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    os.chdir(root)
    if number is not None and libc.syscall(number, b".", b".") == 0:
        _check(libc.umount2(b".", MNT_DETACH), "umount old root")
    else:  # e.g. an initramfs root, where pivot_root is refused: the program is not root, chroot holds it
        _check(libc.chroot(b"."), "chroot")
    os.chdir("/")


def build(spec: dict[str, Any], workdir: str) -> None:
    """Assemble the minimal tree, switch to it and mount a fresh /proc (see the module docstring)."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks back to the host
    root = ROOT_MOUNT
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for path in SYSTEM_DIRS:
        _bind_system(root, path)
    for prefix in spec["binds"]:
        if not os.path.exists(root + prefix):
            _bind(prefix, root + prefix, MS_RDONLY | MS_NOSUID | MS_NODEV)
    for path in spec["hide"]:  # the interpreter's site-packages: stdlib only, and no .pth files to run
        if os.path.isdir(root + path):
            mount("tmpfs", root + path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=755")
    _etc_and_dev(root, spec["uid"], workdir)
    _scratch(root, spec, workdir)
    os.makedirs(root + "/proc")
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _pivot(root)
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    try:
        mount("proc", "/proc", "proc", flags, "hidepid=2")
    except OSError:
        mount("proc", "/proc", "proc", flags)


def host_workdir(spec: dict[str, Any]) -> str:
    """Weak mode (no mount namespace): a private directory on the host, owned by the run's uid."""
    import tempfile  # weak mode only: keep the usual start-up free of these imports

    path = tempfile.mkdtemp(prefix="asyncrl-sandbox-")
    if spec["drop"]:
        os.chown(path, spec["uid"], spec["uid"])
    return path


def remove_host_workdir(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
