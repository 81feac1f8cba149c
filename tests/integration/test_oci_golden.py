"""The real consumers read the OCI golden files (tests/golden/*/oci-vnics/): ``netplan
generate --root-dir`` turns both netplan files into networkd files with the VNIC's table and
rules, and libnm loads and verifies both keyfiles without a warning. (The networkd files
are what netplan would generate for networkd; the lab test loads one into a real networkd.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import check
from tests.unit.test_oci import GOLDEN_CASES, golden_path, golden_state

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def netplan() -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which("netplan", path=search)
    if found is None:
        pytest.fail("netplan not found: install the Debian package netplan.io", pytrace=False)
    return found


def test_netplan_generates_every_oci_golden_file_cleanly(netplan: str, tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "netplan"
    conf.mkdir(parents=True)
    for case in GOLDEN_CASES:
        path = conf / f"90-nicreconciled-{golden_state(case).key}.yaml"
        path.write_text(golden_path("netplan", case).read_text(encoding="utf-8"))
        path.chmod(0o600)
    done = subprocess.run(
        [netplan, "generate", "--root-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    assert "too open" not in done.stderr, done.stderr
    for case in GOLDEN_CASES:
        state = golden_state(case)
        (network,) = (tmp_path / "run" / "systemd" / "network").glob(
            f"*-netplan-nicr-{state.key}.network"
        )
        text = network.read_text()
        table = state.route_table
        assert f"Table={table}" in text
        assert f"Gateway={state.ipv4_gateway}" in text
        for address in (*state.ipv4_addresses, *state.ipv6_addresses):
            assert f"Address={address}/" in text
            host = 32 if address.version == 4 else 128
            assert f"From={address}/{host}\nTable={table}\nPriority={table}" in text


def test_libnm_verifies_every_oci_keyfile(libnm: str, tmp_path: Path) -> None:
    paths = []
    for case in sorted(GOLDEN_CASES):
        path = tmp_path / golden_path("networkmanager", case).name
        path.write_text(golden_path("networkmanager", case).read_text(encoding="utf-8"))
        path.chmod(0o600)
        paths.append(path)
    for case, result in zip(sorted(GOLDEN_CASES), check(libnm, paths), strict=True):
        state = golden_state(case)
        assert result["ok"], result
        assert result["error"] is None
        assert result["warnings"] == [] == result["unknown_keys"]
        assert result["mac"] == state.mac.upper()
        table = state.route_table
        v4, v6 = result["ipv4"], result["ipv6"]
        assert v4["rules"] == [f"priority {table} from {state.ipv4_addresses[0]} table {table}"]
        assert {(r["dest"], r["next_hop"], r["table"]) for r in v4["routes"]} == {
            (str(state.ipv4_subnet.network_address) if state.ipv4_subnet else "", None, table),
            ("0.0.0.0", str(state.ipv4_gateway), table),
        }
        expected6 = [f"priority {table} from {a} table {table}" for a in state.ipv6_addresses]
        assert v6["rules"] == expected6
