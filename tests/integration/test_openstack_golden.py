"""The real consumers accept the OpenStack golden files: ``netplan generate`` and libnm."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integration.conftest import check
from tests.integration.test_netplan_generate import assert_clean, generate, network_file
from tests.integration.test_netplan_generate import netplan as netplan  # the fixture

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def test_netplan_generate_accepts_them(
    netplan: str,
    tmp_path: Path,
) -> None:
    files = {p.name: p.read_text() for p in sorted(GOLDEN.glob("netplan/openstack-ports/*.yaml"))}
    assert len(files) == 2
    assert_clean(generate(netplan, tmp_path, files))
    static = network_file(tmp_path, "fa163e112202").read_text()
    for needle in ("Address=10.0.11.21/24", "Table=10040", "From=2001:db8:11::10/128"):
        assert needle in static
    dhcp = network_file(tmp_path, "fa163e112203").read_text()
    assert "DHCP=ipv4" in dhcp
    assert "RoutingPolicyRule" not in dhcp


def test_libnm_verifies_the_keyfiles(libnm: str, tmp_path: Path) -> None:
    paths = []
    for golden in sorted(GOLDEN.glob("networkmanager/openstack-ports/*.nmconnection")):
        path = tmp_path / golden.name
        shutil.copyfile(golden, path)
        path.chmod(0o600)
        paths.append(path)
    assert len(paths) == 2
    for result in check(libnm, paths):
        assert result["ok"], result
        assert result["warnings"] == []
        assert result["unknown_keys"] == []
