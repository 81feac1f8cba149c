"""The real consumer checks our keyfiles: libnm's ``NM.keyfile_read`` + ``verify()``.

Rendered states and every golden file are written 0600 to a temporary directory and read by
``tests/tools/nm_keyfile_check.py`` under Debian's /usr/bin/python3 (libnm's bindings are
system packages). The assertions are on what libnm parsed (addresses, routes with their
table, rules as libnm prints them, never-default, metrics) and on the absence of any
warning: libnm drops a value it cannot parse with a warning and loads the rest, so "it
loaded" proves little. Missing libnm fails these tests, naming the Debian packages.

The netplan case checks the file name the NetworkManager-backend applier loads against
what ``netplan generate`` really writes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

import pytest

from nicreconciled.apply_netplan import netplan_nm_connection_id
from nicreconciled.model import NicState
from nicreconciled.render.netplan import NetplanRenderer
from nicreconciled.render.networkmanager import NetworkManagerRenderer, connection_uuid
from tests.integration.conftest import check
from tests.states import ec2_state

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = ROOT / "tests" / "golden" / "networkmanager"


def write(directory: Path, states: list[NicState]) -> list[Path]:
    """Render STATES into DIRECTORY as nicreconciled writes them (0600)."""
    renderer = NetworkManagerRenderer()
    paths = []
    for state in states:
        path = directory / renderer.filename(state.mac)
        path.write_text(renderer.render(state), encoding="utf-8")
        path.chmod(0o600)
        paths.append(path)
    return paths


def nic(**fields: Any) -> NicState:
    base: dict[str, Any] = {
        "mac": "0a:1b:2c:3d:4e:5f",
        "cloud": "ec2",
        "primary": False,
        "device_number": 1,
        "ipv4_addresses": ("10.0.1.10",),
        "ipv4_subnet": "10.0.1.0/24",
        "ipv4_gateway": "10.0.1.1",
    }
    base.update(fields)
    return ec2_state(base)


DUAL_STACK = nic(
    mac="0a:1b:2c:3d:4e:60",
    network_card=1,
    device_number=2,
    ipv4_addresses=("10.0.2.10", "10.0.2.20", "10.0.2.21"),
    ipv4_subnet="10.0.2.0/24",
    ipv4_gateway="10.0.2.1",
    ipv6_addresses=("2600:1f18:4a3:6902::10", "2600:1f18:4a3:6902::11"),
    ipv6_subnets=("2600:1f18:4a3:6902::/64",),
    ipv4_prefixes=("10.0.2.128/28",),
    ipv6_prefixes=("2600:1f18:4a3:6902:9d00::/80",),
)
STATES: dict[str, NicState] = {
    "ec2-dual-stack-card1": DUAL_STACK,
    "ec2-ipv4-only": nic(),
    "ec2-primary-managed": nic(
        mac="0a:1b:2c:3d:4e:01",
        primary=True,
        device_number=0,
        ipv4_addresses=("10.0.1.5", "10.0.1.6"),
        ipv6_addresses=("2600:1f18:4a3:6901::5",),
        ipv6_subnets=("2600:1f18:4a3:6901::/64",),
    ),
    "ec2-fifty-secondaries": nic(
        mac="0a:1b:2c:3d:4e:70",
        device_number=3,
        ipv4_addresses=tuple(f"10.0.1.{i}" for i in range(10, 60)),
    ),
    "ec2-ipv6-prefix-only": nic(
        mac="0a:1b:2c:3d:4e:71",
        device_number=4,
        ipv6_subnets=("2600:1f18:4a3:6902::/64",),
        ipv6_prefixes=("2600:1f18:4a3:6902:9d00::/80",),
    ),
    "cloudstack-lease-address": nic(
        mac="02:00:4c:4f:4f:50",
        cloud="cloudstack",
        device_number=5,
        ipv4_addresses=("10.1.1.23",),
        ipv4_subnet="10.1.1.0/24",
        ipv4_gateway="10.1.1.1",
    ),
    "cloudstack-no-address": nic(
        mac="02:00:4c:4f:4f:51",
        cloud="cloudstack",
        device_number=6,
        ipv4_addresses=(),
        ipv4_subnet=None,
        ipv4_gateway=None,
    ),
    "ec2-ipv6-only": nic(
        mac="0a:1b:2c:3d:4e:72",
        device_number=7,
        ipv4_addresses=(),
        ipv4_subnet=None,
        ipv4_gateway=None,
        ipv6_addresses=("2600:1f18:4a3:6907::10",),
        ipv6_subnets=("2600:1f18:4a3:6907::/64", "2600:1f18:4a3:6a07::/64"),
        ipv6_prefixes=("2600:1f18:4a3:6907:9d00::/80",),
    ),
}


def route(dest: str, prefix: int, next_hop: str | None, table: int) -> dict[str, Any]:
    return {"dest": dest, "prefix": prefix, "next_hop": next_hop, "table": table}


def parsed_routes(family: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {k: r[k] for k in ("dest", "prefix", "next_hop", "table")} | {"metric": r["metric"]}
        for r in family["routes"]
    ]


def expected_ipv4_routes(state: NicState) -> list[dict[str, Any]]:
    t = state.route_table
    out = []
    if state.ipv4_subnet is not None:
        net = state.ipv4_subnet
        out.append(route(str(net.network_address), net.prefixlen, None, t))
    if state.ipv4_gateway is not None:
        out.append(route("0.0.0.0", 0, str(state.ipv4_gateway), t))
    # -1: no per-route metric, so the profile's route-metric applies.
    return [r | {"metric": -1} for r in out]


def expected_ipv6_routes(state: NicState) -> list[dict[str, Any]]:
    """The subnets in T; with addresses (ipv6.route-table=T) also back in main (254), with
    the link-local prefix."""
    if not (state.ipv6_addresses or state.ipv6_prefixes):
        return []
    out = [
        route(str(s.network_address), s.prefixlen, None, state.route_table)
        for s in state.ipv6_subnets
    ]
    if state.ipv6_addresses:
        out += [route(str(s.network_address), s.prefixlen, None, 254) for s in state.ipv6_subnets]
        out.append(route("fe80::", 64, None, 254))
    return [r | {"metric": -1} for r in out]


def expected_rules(state: NicState, sources: list[str]) -> list[str]:
    # libnm prints a host-length source without its /32 or /128.
    p, t = state.rule_priority, state.route_table
    return [f"priority {p} from {s} table {t}" for s in sources]


def host(network: IPv4Network | IPv6Network) -> str:
    full = network.max_prefixlen == network.prefixlen
    return str(network.network_address) if full else str(network)


class TestToolAndLibnm:
    def test_a_broken_keyfile_is_reported_with_its_warnings(
        self, libnm: str, tmp_path: Path
    ) -> None:
        # Proves the handler sees libnm's warnings: otherwise "no warnings" below means nothing.
        text = NetworkManagerRenderer().render(nic())
        text = text.replace("route1=10.0.1.0/24", "route1=10.0.1.0/99")
        text = text.replace("[ipv6]", "[ipv6]\nroute-metrik=5")
        path = tmp_path / "broken.nmconnection"
        path.write_text(text, encoding="utf-8")
        path.chmod(0o600)
        (result,) = check(libnm, [path])
        assert not result["ok"]
        assert any(w["key"] == "route1" for w in result["warnings"]), result["warnings"]
        assert result["unknown_keys"] == ["ipv6.route-metrik"]


class TestRenderedStates:
    @pytest.mark.parametrize("label", sorted(STATES))
    def test_libnm_reads_exactly_what_the_state_says(
        self, libnm: str, tmp_path: Path, label: str
    ) -> None:
        state = STATES[label]
        (path,) = write(tmp_path, [state])
        (r,) = check(libnm, [path])

        assert r["ok"], json.dumps(r, indent=1)
        assert r["warnings"] == []
        assert r["unknown_keys"] == []
        assert r["error"] is None
        assert r["mode"] == "0600"
        # Normalizing only adds the empty [proxy] setting every profile gets.
        assert r["normalize"]["changed"] == []
        assert set(r["normalize"]["added_settings"]) <= {"proxy"}

        assert r["uuid"] == connection_uuid(state.mac)
        assert r["id"] == f"nicreconciled-{state.key}"
        assert " " not in r["id"]
        assert r["type"] == "802-3-ethernet"
        assert r["mac"] == state.mac.upper()
        assert r["interface_name"] is None
        assert (r["autoconnect"], r["autoconnect_priority"]) == (True, 150)
        assert r["user"] == {"org.freedesktop.NetworkManager.origin": "nicreconciled"}

        v4, v6 = r["ipv4"], r["ipv6"]
        static = [
            f"{a}/{state.ipv4_subnet.prefixlen if state.ipv4_subnet else 32}"
            for a in state.ipv4_addresses
        ]
        assert v4["method"] == ("disabled" if state.ipv6_only else "auto")
        assert v4["addresses"] == static  # the primary first, then the secondaries
        assert v4["route_table"] == 0  # DHCP routes stay in main

        if state.primary:
            assert (v4["never_default"], v4["route_metric"]) == (False, -1)
            assert v4["routes"] == v4["rules"] == v6["routes"] == v6["rules"] == []
            assert v6["method"] == ("auto" if state.ipv6_addresses else "ignore")
            return

        if state.ipv6_only:
            assert v4["routes"] == v4["rules"] == []
        else:
            assert (v4["never_default"], v4["route_metric"]) == (True, state.route_metric)
            assert parsed_routes(v4) == expected_ipv4_routes(state)
            v4_sources = [str(a) for a in state.ipv4_addresses]
            v4_sources += [host(p) for p in state.ipv4_prefixes]
            assert v4["rules"] == expected_rules(state, v4_sources)

        if state.ipv6_addresses:
            assert v6["method"] == "auto"
            # RA routes (the IPv6 default route) into T; never-default would drop it.
            assert (v6["never_default"], v6["route_table"]) == (False, state.route_table)
        elif state.ipv6_prefixes:
            assert v6["method"] == "link-local"
            assert (v6["never_default"], v6["route_table"]) == (True, 0)
        else:
            assert v6["method"] == "disabled"
            assert v6["routes"] == v6["rules"] == v6["addresses"] == []
            return
        assert v6["route_metric"] == state.route_metric
        assert parsed_routes(v6) == expected_ipv6_routes(state)
        v6_sources = [str(a) for a in state.ipv6_addresses] + [host(p) for p in state.ipv6_prefixes]
        assert v6["rules"] == expected_rules(state, v6_sources)

    def test_the_dual_stack_nic_on_card_1_spelled_out(self, libnm: str, tmp_path: Path) -> None:
        # The same facts as above, written by hand rather than derived from the state.
        (r,) = check(libnm, write(tmp_path, [DUAL_STACK]))
        v4, v6 = r["ipv4"], r["ipv6"]
        assert v4["addresses"] == ["10.0.2.10/24", "10.0.2.20/24", "10.0.2.21/24"]
        assert [(x["dest"], x["prefix"], x["next_hop"], x["table"]) for x in v4["routes"]] == [
            ("10.0.2.0", 24, None, 10102),
            ("0.0.0.0", 0, "10.0.2.1", 10102),
        ]
        assert v4["rules"] == [
            "priority 10102 from 10.0.2.10 table 10102",
            "priority 10102 from 10.0.2.20 table 10102",
            "priority 10102 from 10.0.2.21 table 10102",
            "priority 10102 from 10.0.2.128/28 table 10102",
        ]
        assert (v4["never_default"], v4["route_metric"]) == (True, 614)
        assert v6["addresses"] == ["2600:1f18:4a3:6902::10/64", "2600:1f18:4a3:6902::11/64"]
        assert (v6["route_table"], v6["never_default"], v6["route_metric"]) == (10102, False, 614)
        assert [(x["dest"], x["prefix"], x["table"]) for x in v6["routes"]] == [
            ("2600:1f18:4a3:6902::", 64, 10102),
            ("2600:1f18:4a3:6902::", 64, 254),
            ("fe80::", 64, 254),
        ]
        assert v6["rules"] == [
            "priority 10102 from 2600:1f18:4a3:6902::10 table 10102",
            "priority 10102 from 2600:1f18:4a3:6902::11 table 10102",
            "priority 10102 from 2600:1f18:4a3:6902:9d00::/80 table 10102",
        ]

    def test_all_nics_of_one_instance_load_together_with_distinct_ids(
        self, libnm: str, tmp_path: Path
    ) -> None:
        results = check(libnm, write(tmp_path, list(STATES.values())))
        assert all(r["ok"] for r in results), [r["file"] for r in results if not r["ok"]]
        assert len({r["uuid"] for r in results}) == len(results)
        assert len({r["id"] for r in results}) == len(results)


class TestGoldenFiles:
    def test_every_golden_file_loads_cleanly(self, libnm: str, tmp_path: Path) -> None:
        goldens = sorted(GOLDEN_DIR.glob("*.nmconnection"))
        assert len(goldens) >= 6
        paths = []
        for golden in goldens:
            path = tmp_path / golden.name
            shutil.copyfile(golden, path)
            path.chmod(0o600)
            paths.append(path)
        for r in check(libnm, paths):
            assert r["ok"], json.dumps(r, indent=1)
            assert r["warnings"] == []
            assert r["unknown_keys"] == []


class TestNetplanNetworkManagerBackend:
    """The applier loads the keyfile netplan generates for our definition: check its name."""

    def test_netplan_writes_the_keyfile_the_applier_loads(self, tmp_path: Path) -> None:
        search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
        netplan = shutil.which("netplan", path=search)
        if netplan is None:
            pytest.fail("netplan not found: install the Debian package netplan.io", pytrace=False)
        renderer = NetplanRenderer(backend="NetworkManager")
        conf = tmp_path / "etc" / "netplan"
        conf.mkdir(parents=True)
        path = conf / renderer.filename(DUAL_STACK.mac)
        path.write_text(renderer.render(DUAL_STACK), encoding="utf-8")
        path.chmod(0o600)
        done = subprocess.run(
            [netplan, "generate", "--root-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        connection_id = netplan_nm_connection_id(DUAL_STACK.mac)
        generated = tmp_path / "run" / "NetworkManager" / "system-connections"
        assert sorted(p.name for p in generated.iterdir()) == [f"{connection_id}.nmconnection"]
        text = (generated / f"{connection_id}.nmconnection").read_text(encoding="utf-8")
        assert f"id={connection_id}\n" in text

        # Removing our YAML and generating again deletes it: the applier's "load" of the
        # missing path then makes NetworkManager forget the profile.
        path.unlink()
        done = subprocess.run(
            [netplan, "generate", "--root-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert not (generated / f"{connection_id}.nmconnection").exists()
