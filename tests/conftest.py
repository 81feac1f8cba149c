"""Shared test plumbing: network namespaces and processes that always get cleaned up."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

_counter = itertools.count()


def require_tool(name: str) -> str:
    """Tests fail (never skip) when a tool .ci/run installs is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; .ci/run installs it (apt-get)", pytrace=False)
    return path


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


@dataclass
class Netns:
    """A network namespace made for one test; every process started in it dies with it."""

    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True)

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *argv], start_new_session=True, **kwargs
        )
        self.procs.append(proc)
        return proc

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv], text=True, capture_output=True, **kwargs
        )

    def ifindex(self, ifname: str) -> int:
        done = self.run(["cat", f"/sys/class/net/{ifname}/ifindex"], check=True)
        return int(done.stdout)

    def plug(self, ifname: str, mac: str, peer: str | None = None) -> None:
        """Hot-plug a veth NIC with MAC (real kernel add uevents); its peer is nrp-*."""
        peer = peer or f"nrp{ifname[-6:]}"
        self.ip("link", "add", ifname, "address", mac, "type", "veth", "peer", "name", peer)

    def unplug(self, ifname: str) -> None:
        self.ip("link", "del", ifname)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        pids = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True
        ).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@pytest.fixture
def netns() -> Iterator[Netns]:
    require_tool("ip")
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (network namespaces)", pytrace=False)
    ns = Netns(f"nrt-{os.getpid()}-{next(_counter)}")
    subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True)
    try:
        ns.ip("link", "set", "lo", "up")
        yield ns
    finally:
        ns.cleanup()


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


PYTHON = sys.executable
