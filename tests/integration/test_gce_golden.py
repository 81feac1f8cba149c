"""The real consumers read the GCE golden files (tests/golden/*/gce-nics/): ``netplan generate
--root-dir`` turns every netplan file into a networkd file with the NIC's MTU, table, rules
(its address and each alias, forwarded and target-instance range) and local routes, and libnm
loads and verifies every keyfile without a warning, with the same. (The networkd golden files
are read by the real systemd-networkd in tests/integration/lab/test_networkd_renderer.py,
every subfolder included.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import check
from tests.integration.test_netplan_generate import sections
from tests.unit.test_gce import GOLDEN_CASES, golden_path, golden_state

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def netplan() -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which("netplan", path=search)
    if found is None:
        pytest.fail("netplan not found: install the Debian package netplan.io", pytrace=False)
    return found


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_netplan_generates_every_gce_golden_file(netplan: str, tmp_path: Path, case: str) -> None:
    # One root per case: every case is a nic1, and one host has one table 10001.
    state = golden_state(case)
    conf = tmp_path / "etc" / "netplan"
    conf.mkdir(parents=True)
    path = conf / f"90-nicreconciled-{state.key}.yaml"
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
    (network,) = (tmp_path / "run" / "systemd" / "network").glob(
        f"*-netplan-nicr-{state.key}.network"
    )
    found = sections(network)
    table = str(state.route_table)
    rules = {body["From"][0] for name, body in found if name == "RoutingPolicyRule"}
    assert all(body["Table"] == [table] for name, body in found if name == "RoutingPolicyRule")
    own = {f"{a}/{32 if a.version == 4 else 128}" for a in state.ipv4_addresses}
    own |= {f"{a}/128" for a in state.ipv6_addresses}
    assert rules == own | {str(p) for p in (*state.ipv4_prefixes, *state.ipv6_prefixes)}
    local = [
        body["Destination"][0]
        for name, body in found
        if name == "Route" and body.get("Type") == ["local"]
    ]
    assert local == [str(n) for n in state.local_routes], case
    links = [body for name, body in found if name == "Link"]
    assert links
    assert links[0]["MTUBytes"] == [str(state.mtu)], case
    gateways = {body.get("Gateway", [""])[0] for name, body in found if name == "Route"}
    assert str(state.ipv4_gateway) in gateways
    if state.ipv6_gateway is not None:
        assert str(state.ipv6_gateway) in gateways


def test_libnm_verifies_every_gce_keyfile(libnm: str, tmp_path: Path) -> None:
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
        sources4 = [str(state.ipv4_addresses[0]), *(str(p) for p in state.ipv4_prefixes)]
        sources4 = [s.removesuffix("/32") for s in sources4]
        assert v4["rules"] == [f"priority {table} from {s} table {table}" for s in sources4]
        local = [
            f"{r['dest']}/{r['prefix']}"
            for r in [*v4["routes"], *v6["routes"]]
            if r["attributes"].get("type") == "local"
        ]
        assert local == [str(n) for n in state.local_routes], case
        routes4 = {(r["dest"], r["next_hop"], r["table"]) for r in v4["routes"]}
        assert ("0.0.0.0", str(state.ipv4_gateway), table) in routes4
