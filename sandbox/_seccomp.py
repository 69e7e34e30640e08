"""A small seccomp filter for the program (stdlib only, ctypes): the syscalls that open kernel attack
surface an unprivileged user otherwise has, and that a program under test has no use for.

* new **user namespaces** (``unshare``/``clone`` with ``CLONE_NEWUSER``): inside one a process is "root"
  and reaches mount, network and netfilter code paths of the kernel; it is how most namespace-sandbox
  escapes begin. ``clone3`` passes its flags in memory a filter cannot read, so it answers ``ENOSYS`` and
  glibc falls back to ``clone`` (what Docker and systemd do);
* sockets of any family but ``AF_UNIX``, ``AF_INET``, ``AF_INET6`` and ``AF_NETLINK`` (the ones a network
  namespace confines): ``EAFNOSUPPORT``. ``AF_VSOCK`` in particular is not confined by a network namespace
  on most kernels, and on a VM it reaches the hypervisor's host;
* ``setns``, the keyring calls (``keyctl``, ``add_key``, ``request_key``), ``bpf``, ``perf_event_open``,
  ``userfaultfd``, ``io_uring_setup``, ``syslog`` (the kernel log): ``EPERM``;
* on x86-64 the x32 syscall numbers (a known way around filters): ``ENOSYS``; another architecture in the
  audit field: the process is killed.

Everything else is allowed. Only x86-64 and aarch64 have numbers here; elsewhere :func:`install` returns
False and the run reports ``isolation["seccomp"] = False``.
"""

from __future__ import annotations

import ctypes
import errno
import os

PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
RET_ALLOW, RET_KILL_PROCESS, RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
NR_OFFSET, ARCH_OFFSET, ARG0_OFFSET = 0, 4, 16  # struct seccomp_data; arg0's low word (little-endian)
CLONE_NEWUSER = 0x10000000
SOCKET_FAMILIES = (1, 2, 10, 16)  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK
X32_BIT = 0x40000000
DENIED = ("setns", "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
          "syslog")
ARCHES = {  # uname machine: (AUDIT_ARCH_*, syscall numbers)
    "x86_64": (0xC000003E, {"socket": 41, "clone": 56, "unshare": 272, "clone3": 435, "setns": 308, "keyctl": 250,
                            "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298,
                            "userfaultfd": 323, "io_uring_setup": 425, "syslog": 103}),
    "aarch64": (0xC00000B7, {"socket": 198, "clone": 220, "unshare": 97, "clone3": 435, "setns": 268, "keyctl": 219,
                             "add_key": 217, "request_key": 218, "bpf": 280, "perf_event_open": 241,
                             "userfaultfd": 282, "io_uring_setup": 425, "syslog": 116}),
}


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


Insn = tuple[int, int, int, int]


def _deny_flag(nr: int, flag: int) -> list[Insn]:
    """``nr`` with ``flag`` set in its first argument: EPERM; ``nr`` without it: allow; others: fall through."""
    return [(JEQ_K, 0, 4, nr), (LD_W_ABS, 0, 0, ARG0_OFFSET), (JSET_K, 0, 1, flag),
            (RET_K, 0, 0, RET_ERRNO | errno.EPERM), (RET_K, 0, 0, RET_ALLOW)]


def _socket_families(nr: int) -> list[Insn]:
    """``socket`` with a family outside :data:`SOCKET_FAMILIES`: EAFNOSUPPORT; inside: allow."""
    n = len(SOCKET_FAMILIES)
    insns: list[Insn] = [(JEQ_K, 0, n + 3, nr), (LD_W_ABS, 0, 0, ARG0_OFFSET)]
    insns += [(JEQ_K, n - i, 0, family) for i, family in enumerate(SOCKET_FAMILIES)]  # -> the allow below
    return insns + [(RET_K, 0, 0, RET_ERRNO | errno.EAFNOSUPPORT), (RET_K, 0, 0, RET_ALLOW)]


def program(machine: str) -> list[Insn] | None:
    """The filter for this architecture, as (code, jt, jf, k) instructions; None where we have no numbers."""
    if machine not in ARCHES:
        return None
    audit_arch, nrs = ARCHES[machine]
    insns: list[Insn] = [(LD_W_ABS, 0, 0, ARCH_OFFSET), (JEQ_K, 1, 0, audit_arch), (RET_K, 0, 0, RET_KILL_PROCESS),
                         (LD_W_ABS, 0, 0, NR_OFFSET)]
    if machine == "x86_64":
        insns += [(JGE_K, 0, 1, X32_BIT), (RET_K, 0, 0, RET_ERRNO | errno.ENOSYS)]
    insns += [(JEQ_K, 0, 1, nrs["clone3"]), (RET_K, 0, 0, RET_ERRNO | errno.ENOSYS)]
    for name in DENIED:
        insns += [(JEQ_K, 0, 1, nrs[name]), (RET_K, 0, 0, RET_ERRNO | errno.EPERM)]
    insns += _deny_flag(nrs["unshare"], CLONE_NEWUSER) + _deny_flag(nrs["clone"], CLONE_NEWUSER)
    insns += _socket_families(nrs["socket"])
    return insns + [(RET_K, 0, 0, RET_ALLOW)]


def install(libc: ctypes.CDLL) -> bool:
    """Install the filter on this process (needs no_new_privs first); False where there is none to install."""
    insns = program(os.uname().machine)
    if insns is None:
        return False
    filters = (SockFilter * len(insns))(*[SockFilter(*insn) for insn in insns])
    prog = SockFprog(len(insns), filters)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter: {os.strerror(err)}")
    return True
