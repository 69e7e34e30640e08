"""Simulated hosts for multi-host tests: Linux network namespaces joined by a bridge.

Each host is a namespace with one veth interface whose other end is enslaved to a bridge
living in a namespace of its own. Addresses come only from 192.0.2.0/24 (TEST-NET-1, never
routed); everything is made by the test and removed afterwards::

    with Hosts({"a": "192.0.2.11", "b": "192.0.2.12"}) as hosts:
        subprocess.run(hosts.cmd("a", ["python", "-c", "..."]))
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import uuid

TEST_NET = ipaddress.ip_network("192.0.2.0/24")


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no `ip`, or the kernel refuses)."""


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {res.stderr.strip()}")


class Hosts:
    def __init__(self, addresses: dict[str, str]) -> None:
        for addr in addresses.values():
            if ipaddress.ip_address(addr) not in TEST_NET:
                raise ValueError(f"{addr} is outside {TEST_NET}: test hosts use only that range")
        self.addresses = addresses
        tag = uuid.uuid4().hex[:6]
        self.bridge_ns = f"arl{tag}br"
        self.ns = {name: f"arl{tag}{i}" for i, name in enumerate(addresses)}
        self.ifname = {name: f"v{tag}{i}" for i, name in enumerate(addresses)}  # <= 15 characters
        self._made: list[str] = []

    def __enter__(self) -> Hosts:
        if os.geteuid() != 0:
            raise NetnsUnavailable("not root: network namespaces need CAP_NET_ADMIN")
        if shutil.which("ip") is None:
            raise NetnsUnavailable("the `ip` command (iproute2) is not installed")
        try:
            self._make()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _make(self) -> None:
        b = self.bridge_ns
        _ip("netns", "add", b)
        self._made.append(b)
        _ip("-n", b, "link", "set", "lo", "up")
        _ip("-n", b, "link", "add", "br0", "type", "bridge")
        _ip("-n", b, "link", "set", "br0", "up")
        for name, addr in self.addresses.items():
            ns, dev, peer = self.ns[name], self.ifname[name], f"b{self.ifname[name][1:]}"
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("link", "add", dev, "netns", ns, "type", "veth", "peer", "name", peer, "netns", b)
            _ip("-n", b, "link", "set", peer, "master", "br0")
            _ip("-n", b, "link", "set", peer, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def __exit__(self, *exc: object) -> None:
        for ns in reversed(self._made):  # removing a namespace removes its veth ends
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self._made.clear()

    def cmd(self, name: str, argv: list[str]) -> list[str]:
        """``argv`` run on host ``name`` (inside its namespace)."""
        return ["ip", "netns", "exec", self.ns[name], *argv]
