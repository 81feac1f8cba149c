"""A running stack for end-to-end tests: simulator + daemon inside a test-made netns."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nicreconciled.sim.client import SimClient
from tests.conftest import PYTHON, Netns, read_json_lines

NM_CHECK_TOOL = Path(__file__).resolve().parents[1] / "tools" / "nm_keyfile_check.py"
SYSTEM_PYTHON = "/usr/bin/python3"
PACKAGES = "python3-gi gir1.2-nm-1.0"


@pytest.fixture(scope="module")
def libnm() -> str:
    """/usr/bin/python3, after proving it can import libnm (fail, never skip)."""
    probe = "import gi; gi.require_version('NM', '1.0'); from gi.repository import NM"
    try:
        done = subprocess.run(
            [SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60
        )
    except OSError as exc:
        pytest.fail(
            f"{SYSTEM_PYTHON} not runnable ({exc}); install python3 and {PACKAGES}", pytrace=False
        )
    if done.returncode != 0:
        pytest.fail(
            f"{SYSTEM_PYTHON} cannot import libnm: install the Debian packages {PACKAGES}\n"
            f"{done.stderr.strip()}",
            pytrace=False,
        )
    return SYSTEM_PYTHON


def check(python: str, paths: list[Path]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [python, str(NM_CHECK_TOOL), *map(str, paths)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode in (0, 1), done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout)
    assert [r["file"] for r in results] == [str(p) for p in paths]
    return results


PRIMARY = "0a:00:00:00:00:01"
PORT = 8080


def nic_spec(mac: str, device_number: int = 1, **extra: Any) -> dict[str, Any]:
    octet = 10 + device_number
    spec: dict[str, Any] = {
        "mac": mac,
        "device_number": device_number,
        "local_ipv4s": [f"10.0.{octet}.25"],
        "subnet_ipv4_cidr": f"10.0.{octet}.0/24",
    }
    spec.update(extra)
    return spec


@dataclass
class Stack:
    ns: Netns
    tmp: Path
    sim: SimClient
    config: dict[str, Any] = field(default_factory=dict)
    daemon: subprocess.Popen[bytes] | None = None
    fakebin: Path | None = None
    cloud: str = "ec2"
    renderer: str = "netplan"
    #: When set, the daemon sees this directory as /run (its own mount namespace), so a
    #: test can hand it systemd-networkd lease files without touching the host's /run.
    run_dir: Path | None = None

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    @property
    def state(self) -> Path:
        return self.tmp / "state"

    @property
    def log_path(self) -> Path:
        return self.tmp / "daemon.log"

    @property
    def apply_log(self) -> Path:
        return self.tmp / "apply.log"

    def file_for(self, mac: str) -> Path:
        key = mac.replace(":", "")
        if self.renderer == "networkmanager":
            return self.out / f"nicreconciled-{key}.nmconnection"
        if self.renderer == "networkd":
            return self.out / f"05-nicreconciled-{key}.network"
        return self.out / f"90-nicreconciled-{key}.yaml"

    def write_config(self, **overrides: Any) -> Path:
        polling = {"deadline": 8, "ipv6_grace": 6, "max_interval": 1}
        polling.update(overrides.pop("polling", {}))
        lines = [
            f'cloud = "{self.cloud}"',
            f'renderer = "{self.renderer}"',
            f'output_dir = "{self.out}"',
            f'state_dir = "{self.state}"',
            f"apply = {str(overrides.pop('apply', False)).lower()}",
            f"resync_interval = {overrides.pop('resync_interval', 600)}",
        ]
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in overrides.items()]
        lines += [
            "[interfaces]",
            "virtual = true",
            'ignore = ["nrp*"]',
            "[udev]",
            'source = "kernel"',
        ]
        if self.cloud not in ("cloudstack", "auto"):  # the simulator is the cloud's endpoint
            lines += [f"[{self.cloud}]", f'endpoint = "http://127.0.0.1:{PORT}"']
        if self.cloud == "ec2":
            lines += ['fallback_endpoint = ""']
        lines += ["[polling]"]
        lines += [f"{k} = {v}" for k, v in polling.items()]
        if self.fakebin is not None:
            # The daemon runs netplan's generator itself: the recording stand-in.
            lines += ["[netplan]", f'generator = "{self.fakebin / "netplan-generate"}"']
        path = self.tmp / "nicreconciled.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, *args: str, **overrides: Any) -> subprocess.Popen[bytes]:
        cfg = self.write_config(**overrides)
        env = dict(os.environ)
        if self.fakebin is not None:
            env["PATH"] = f"{self.fakebin}:{env['PATH']}"
            env["NICR_APPLY_LOG"] = str(self.apply_log)
        log = self.log_path.open("ab")
        argv = [PYTHON, "-m", "nicreconciled", "--config", str(cfg), "--log-format", "json"]
        argv += args or ("run",)
        if self.run_dir is not None:
            mount = 'mount --bind "$0" /run && exec "$@"'
            argv = ["unshare", "--mount", "sh", "-c", mount, str(self.run_dir), *argv]
        self.daemon = self.ns.popen(argv, stderr=log, env=env)
        return self.daemon

    def events(self, name: str | None = None, **match: Any) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        out = []
        for e in read_json_lines(self.log_path):
            if name is not None and e.get("event") != name:
                continue
            if all(e.get(k) == v for k, v in match.items()):
                out.append(e)
        return out

    async def wait_event(self, name: str, timeout: float = 15, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(name, **match)
            if found:
                return found[-1]
            self.assert_alive()
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {name} {match} event within {timeout} s:\n{self.tail()}")

    async def wait_file(self, mac: str, needle: str = "", timeout: float = 15) -> str:
        path = self.file_for(mac)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and needle in (text := path.read_text()):
                return text
            self.assert_alive()
            await asyncio.sleep(0.05)
        raise AssertionError(f"{path.name} never contained {needle!r}:\n{self.tail()}")

    async def wait_gone(self, mac: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.file_for(mac).exists():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.file_for(mac).name} still there:\n{self.tail()}")

    def assert_alive(self) -> None:
        if self.daemon is not None and self.daemon.poll() is not None:
            raise AssertionError(f"daemon exited {self.daemon.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5) -> int:
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        return self.daemon.wait(timeout=timeout)


FAKE_TOOL = """#!/bin/sh
echo "$(basename "$0") $*" >> "$NICR_APPLY_LOG"
exit ${NICR_FAKE_EXIT:-0}
"""


@contextlib.asynccontextmanager
async def sim_stack(netns: Netns, tmp_path: Path, cloud: str = "ec2") -> AsyncIterator[Stack]:
    """CLOUD's simulator on NETNS's loopback (``python -m nicreconciled.sim``), ready and
    empty, and a Stack for it; the daemon a test started is killed at the end."""
    ctl = tmp_path / "sim.sock"
    netns.popen(
        [
            *(PYTHON, "-m", "nicreconciled.sim", "--cloud", cloud),
            *("--listen", f"127.0.0.1:{PORT}", "--control", str(ctl)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "sim.log").open("ab"),
    )
    sim = SimClient(str(ctl))
    await sim.wait_ready(15)
    st = Stack(netns, tmp_path, sim, cloud=cloud)
    try:
        yield st
    finally:
        await sim.close()
        if st.daemon is not None and st.daemon.poll() is None:
            st.daemon.kill()
            st.daemon.wait(timeout=10)


@pytest.fixture
async def stack(netns: Netns, tmp_path: Path) -> AsyncIterator[Stack]:
    async with sim_stack(netns, tmp_path) as st:
        await st.sim.add_nic(nic_spec(PRIMARY, device_number=0))
        await st.sim.set_primary(PRIMARY)
        yield st


@pytest.fixture
def fakebin(stack: Stack) -> Path:
    """netplan, its generator and networkctl stand-ins that record their arguments (no
    networkd in a netns)."""
    path = stack.tmp / "bin"
    path.mkdir()
    for tool in ("netplan", "netplan-generate", "networkctl"):
        (path / tool).write_text(FAKE_TOOL)
        (path / tool).chmod(0o755)
    stack.fakebin = path
    return path
