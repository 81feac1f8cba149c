"""The unit file, checked by systemd itself against Debian's NetworkManager and cloud-init units.

The cycle cloud-init #6143 hit: a unit ordered before sysinit.target that needs the network
waits for NetworkManager, which (default dependencies) waits for dbus and so for
sysinit.target. `systemd-analyze verify` prints "Found ordering cycle" for such a
transaction (and exits 0 after breaking it by dropping a job, so the text is what we check).
"""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_tool

pytestmark = pytest.mark.integration

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "nicreconciled.service"
ENTRY_POINT = Path(sys.executable).parent / "nicreconciled"
FORBIDDEN_BEFORE = {"sysinit.target", "network-pre.target", "network-online.target"}


def installed(unit: str) -> None:
    for base in ("/lib/systemd/system", "/usr/lib/systemd/system", "/etc/systemd/system"):
        if (Path(base) / unit).exists():
            return
    pytest.fail(f"{unit} is not installed; .ci/run installs network-manager and cloud-init")


def verify(tmp_path: Path, text: str) -> str:
    """Run systemd-analyze verify on TEXT as nicreconciled.service; its combined output."""
    analyze = require_tool("systemd-analyze")
    installed("NetworkManager.service")
    installed("cloud-init.service")
    unit = tmp_path / "nicreconciled.service"
    # verify insists that ExecStart exists: point it at this checkout's entry point.
    unit.write_text(text.replace("/usr/bin/nicreconciled", str(ENTRY_POINT)))
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    return done.stdout + done.stderr + f"\n(exit {done.returncode})"


def with_unit_lines(*lines: str) -> str:
    """The shipped unit with its After= line replaced by LINES."""
    out = []
    for line in UNIT.read_text().splitlines():
        out.extend(lines if line.startswith("After=") else [line])
    return "\n".join(out) + "\n"


class TestOrdering:
    def test_the_shipped_unit_verifies_cleanly(self, tmp_path: Path) -> None:
        output = verify(tmp_path, UNIT.read_text())
        assert "ordering cycle" not in output
        assert "(exit 0)" in output

    def test_it_stays_acyclic_even_when_networkmanager_is_pulled_in(self, tmp_path: Path) -> None:
        text = UNIT.read_text().replace("[Unit]\n", "[Unit]\nWants=NetworkManager.service\n")
        output = verify(tmp_path, text)
        assert "ordering cycle" not in output

    def test_the_check_catches_the_cloud_init_style_cycle(self, tmp_path: Path) -> None:
        bad = with_unit_lines(
            "DefaultDependencies=no",
            "Wants=NetworkManager.service",
            "After=NetworkManager.service",
            "Before=sysinit.target",
        )
        output = verify(tmp_path, bad)
        assert "Found ordering cycle" in output
        assert "NetworkManager.service" in output

    def test_the_check_catches_before_sysinit_with_after_networkmanager(
        self, tmp_path: Path
    ) -> None:
        bad = with_unit_lines("After=NetworkManager.service", "Before=sysinit.target")
        assert "Found ordering cycle" in verify(tmp_path, bad)

    def test_the_unit_is_ordered_after_every_network_manager_and_before_no_early_target(
        self,
    ) -> None:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(UNIT.read_text())
        after = set(parser["Unit"].get("After", "").split())
        before = set(parser["Unit"].get("Before", "").split())
        assert {"network.target", "NetworkManager.service", "systemd-networkd.service"} <= after
        assert not before & FORBIDDEN_BEFORE
        assert parser["Unit"].get("DefaultDependencies", "yes") == "yes"
        assert parser["Service"]["Type"] == "notify"
        assert parser["Install"]["WantedBy"] == "multi-user.target"
