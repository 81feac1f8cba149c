"""The lab itself: its test-only netplan wrapper, and that it leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nicreconciled.lab import Lab
from nicreconciled.lab.texts import netplan_wrapper
from tests.conftest import require_tool

pytestmark = pytest.mark.integration

YAML = """network:
  version: 2
  ethernets:
    nicr-0a0000000101:
      match: {macaddress: "0a:00:00:00:01:01"}
      dhcp4: true
"""


@pytest.mark.parametrize("form", [["--root-dir", "{root}"], ["--root-dir={root}"]])
def test_netplan_wrapper_rewrites_the_files_of_the_tree_it_generated(
    tmp_path: Path, form: list[str]
) -> None:
    """netplan 0.106 matches by PermanentMACAddress= (a veth has none): the wrapper runs the
    real netplan, then matches by MACAddress= in the tree netplan wrote (never elsewhere)."""
    require_tool("netplan")
    wrapper = tmp_path / "netplan"
    wrapper.write_text(netplan_wrapper())
    wrapper.chmod(0o755)
    root = tmp_path / "root"
    (root / "etc/netplan").mkdir(parents=True)
    (root / "etc/netplan/90-x.yaml").write_text(YAML)
    (root / "etc/netplan/90-x.yaml").chmod(0o600)
    args = [a.format(root=root) for a in form]
    done = subprocess.run([str(wrapper), "generate", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = (root / "run/systemd/network/10-netplan-nicr-0a0000000101.network").read_text()
    assert "\nMACAddress=0a:00:00:00:01:01\n" in text
    assert "PermanentMACAddress" not in text


def test_netplan_wrapper_passes_failures_through(tmp_path: Path) -> None:
    require_tool("netplan")
    wrapper = tmp_path / "netplan"
    wrapper.write_text(netplan_wrapper())
    wrapper.chmod(0o755)
    root = tmp_path / "root"
    (root / "etc/netplan").mkdir(parents=True)
    (root / "etc/netplan/90-x.yaml").write_text("network: {version: 2, ethernets: [}\n")
    done = subprocess.run(
        [str(wrapper), "generate", "--root-dir", str(root)], capture_output=True, text=True
    )
    assert done.returncode != 0


def test_lab_leaves_nothing_behind(lab: Lab) -> None:
    """Namespaces, dnsmasq, manager, bus, holder, simulator: all gone after close()."""
    lab.plug("0a:00:00:00:02:01", "10.0.30.20", 24, "2001:db8:30::/64")
    lab.start_sim()
    names = (lab.instance, lab.router)
    pids = [p.pid for p in lab.procs.procs]
    assert len(pids) >= 5  # holder, bus, manager, dnsmasq, simulator
    lab.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names), listed
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    assert not alive, f"processes survived the lab: {alive}"
