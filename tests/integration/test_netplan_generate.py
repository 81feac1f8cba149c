"""The real consumer checks our netplan output: ``netplan generate --root-dir``.

Each golden file and a set of freshly rendered states are installed as
``<tmp>/etc/netplan/<name>`` (0600, as nicreconciled writes them) and turned into backend
files by the installed netplan (Debian netplan.io 0.106 in CI). We then read what networkd
or NetworkManager would be given. A missing ``netplan`` fails these tests: they are the
only proof that the YAML means what the renderer intends.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nicreconciled.model import NicState
from nicreconciled.render.netplan import NetplanRenderer
from nicreconciled.system.netplan import supports_ra_table
from tests.states import ec2_state

pytestmark = pytest.mark.integration

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden" / "netplan"
GOLDEN_FILES = sorted(GOLDEN_DIR.glob("*.yaml"))

Section = tuple[str, dict[str, list[str]]]


@pytest.fixture(scope="module")
def netplan() -> str:
    # /usr/sbin is not on every PATH (non-login shells, some CI runners).
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which("netplan", path=search)
    if found is None:
        pytest.fail(
            "netplan not found: install the Debian package netplan.io; "
            "these tests validate the renderer's output and must not be skipped",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="module")
def ra_table(netplan: str) -> bool:
    """Whether the installed netplan has ``ra-overrides.table`` (>= 1.1; 0.106 has not)."""
    return supports_ra_table(netplan)


def generate(netplan: str, root: Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Install FILES under ROOT/etc/netplan (0600) and run netplan generate on ROOT."""
    conf = root / "etc" / "netplan"
    conf.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = conf / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o600)
    return subprocess.run(
        [netplan, "generate", "--root-dir", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert "too open" not in result.stderr, result.stderr
    assert "WARNING" not in result.stderr, result.stderr


def network_file(root: Path, key: str) -> Path:
    (path,) = (root / "run" / "systemd" / "network").glob(f"*-netplan-nicr-{key}.network")
    return path


def keyfile(root: Path, key: str) -> Path:
    (path,) = (root / "run" / "NetworkManager" / "system-connections").glob(
        f"*nicr-{key}*.nmconnection"
    )
    return path


def sections(path: Path) -> list[Section]:
    """A systemd .network file as (name, {key: [values]}) in order; sections repeat."""
    parsed: list[Section] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            parsed.append((line.strip("[]"), {}))
            continue
        key, _, value = line.partition("=")
        parsed[-1][1].setdefault(key, []).append(value)
    return parsed


def flat(entries: dict[str, list[str]]) -> dict[str, str]:
    assert all(len(v) == 1 for v in entries.values()), entries
    return {k: v[0] for k, v in entries.items()}


def network_routes(path: Path) -> list[dict[str, str]]:
    return [flat(body) for name, body in sections(path) if name == "Route"]


def network_rules(path: Path) -> list[dict[str, str]]:
    return [flat(body) for name, body in sections(path) if name == "RoutingPolicyRule"]


def network_values(path: Path, section: str, key: str) -> list[str]:
    return [v for name, body in sections(path) if name == section for v in body.get(key, [])]


def definition_of(text: str) -> tuple[str, dict[str, Any]]:
    ((netdef_id, definition),) = yaml.safe_load(text)["network"]["ethernets"].items()
    return netdef_id, definition


def expected_routes(definition: dict[str, Any]) -> list[dict[str, str]]:
    """What netplan 0.106 writes to [Route] for our routes entries."""
    routes = []
    for route in definition.get("routes", []):
        expected = {"Destination": route["to"]}
        if "via" in route:
            expected["Gateway"] = route["via"]
        else:
            # netplan's default for a gateway-less unicast route, written even for IPv6
            # (networkd then ignores it there, with a warning).
            expected["Scope"] = route.get("scope", "link")
        expected["Table"] = str(route["table"])
        routes.append(expected)
    return routes


def expected_rules(definition: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {"From": r["from"], "Table": str(r["table"]), "Priority": str(r["priority"])}
        for r in definition.get("routing-policy", [])
    ]


def check_networkd(root: Path, text: str) -> Path:
    """Assert the .network file says what the YAML says; return its path."""
    netdef_id, definition = definition_of(text)
    path = network_file(root, netdef_id.removeprefix("nicr-"))
    assert network_values(path, "Match", "PermanentMACAddress") == [
        definition["match"]["macaddress"]
    ]
    assert network_routes(path) == expected_routes(definition)
    assert network_rules(path) == expected_rules(definition)
    # netplan 0.106 writes the shared DHCPv4/DHCPv6 settings to the legacy [DHCP] section;
    # without an override it sets its own default metric, 100.
    overrides = definition.get("dhcp4-overrides") or definition.get("dhcp6-overrides", {})
    metric = overrides.get("route-metric", 100)
    assert network_values(path, "DHCP", "RouteMetric") == [str(metric)]
    assert network_values(path, "Network", "Address") == definition.get("addresses", [])
    dhcp = {(True, True): "yes", (True, False): "ipv4", (False, True): "ipv6"}
    wanted = dhcp.get((definition["dhcp4"], definition["dhcp6"]))
    assert network_values(path, "Network", "DHCP") == ([wanted] if wanted else [])
    # ra-overrides.table (netplan >= 1.1): the RA's routes, the default one included, in T.
    table = definition.get("ra-overrides", {}).get("table")
    assert network_values(path, "IPv6AcceptRA", "RouteTable") == ([str(table)] if table else [])
    return path


def without_ra_overrides(text: str) -> str:
    """TEXT as the renderer writes it for a netplan without ``ra-overrides.table``."""
    document = yaml.safe_load(text)
    for definition in document["network"]["ethernets"].values():
        definition.pop("ra-overrides", None)
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def has_ra_overrides(text: str) -> bool:
    return "ra-overrides" in definition_of(text)[1]


def read_keyfile(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path, encoding="utf-8")
    return parser


def check_networkmanager(root: Path, text: str) -> None:
    netdef_id, definition = definition_of(text)
    parser = read_keyfile(keyfile(root, netdef_id.removeprefix("nicr-")))
    assert parser["ethernet"]["mac-address"] == definition["match"]["macaddress"]
    overrides = definition.get("dhcp4-overrides") or definition["dhcp6-overrides"]
    metric = str(overrides["route-metric"])
    if definition["dhcp4"]:
        assert parser["ipv4"]["route-metric"] == metric
    else:
        # IPv6-only: every netplan writes IPv4 link-local (169.254/16) for a definition
        # without IPv4 on this backend; a known limit (README), our renderer writes disabled.
        assert parser["ipv4"]["method"] == "link-local"
    if definition["dhcp6"]:
        assert parser["ipv6"]["route-metric"] == metric
    else:
        assert parser["ipv6"]["method"] == "ignore"
    # With dhcp6 off netplan writes [ipv6] method=ignore, and NetworkManager gets no IPv6
    # routes at all.
    routes = [r for r in definition.get("routes", []) if definition["dhcp6"] or ":" not in r["to"]]
    options = [v for s in ("ipv4", "ipv6") for k, v in parser[s].items() if k.endswith("_options")]
    assert sorted(options) == sorted(f"table={r['table']}" for r in routes)
    # netplan 0.106 drops routing-policy for NetworkManager (added upstream by
    # canonical/netplan PR #526). Newer netplan must render every rule, none partially.
    rules = sorted(v for s in ("ipv4", "ipv6") for k, v in parser[s].items() if "routing-rule" in k)
    if rules:
        # ... and, as for routes, none of the IPv6 ones where dhcp6 is off ([ipv6] ignore:
        # seen with netplan 1.1.2).
        wanted = sorted(
            f"priority {r['priority']} from {r['from']} table {r['table']}"
            for r in definition["routing-policy"]
            if definition["dhcp6"] or ":" not in r["from"]
        )
        assert rules == wanted


def is_networkmanager(text: str) -> bool:
    return bool(definition_of(text)[1]["renderer"] == "NetworkManager")


class TestGoldenFiles:
    def test_there_are_golden_files_to_check(self) -> None:
        assert len(GOLDEN_FILES) >= 4

    @pytest.mark.parametrize("golden", GOLDEN_FILES, ids=lambda p: p.stem)
    def test_netplan_accepts_it_and_generates_what_it_says(
        self, netplan: str, ra_table: bool, tmp_path: Path, golden: Path
    ) -> None:
        text = golden.read_text(encoding="utf-8")
        if has_ra_overrides(text) and not ra_table:
            # netplan < 1.1 (0.106 in CI): exactly that key is refused, so the renderer
            # leaves it out there; the rest of the file is checked without it.
            refused = generate(netplan, tmp_path / "refused", {golden.name: text})
            assert refused.returncode != 0
            assert "unknown key 'ra-overrides'" in refused.stderr, refused.stderr
            text = without_ra_overrides(text)
        result = generate(netplan, tmp_path, {golden.name: text})
        assert_clean(result)
        if is_networkmanager(text):
            check_networkmanager(tmp_path, text)
        else:
            check_networkd(tmp_path, text)

    def test_the_ra_table_golden_files_exist(self) -> None:
        texts = [p.read_text(encoding="utf-8") for p in GOLDEN_FILES]
        assert sum(has_ra_overrides(t) for t in texts) >= 2

    def test_all_golden_files_together_are_accepted(
        self, netplan: str, ra_table: bool, tmp_path: Path
    ) -> None:
        # Several NICs at once: distinct tables, no "default route consistency" error.
        texts = {p.name: p.read_text(encoding="utf-8") for p in GOLDEN_FILES}
        if not ra_table:
            texts = {name: without_ra_overrides(t) for name, t in texts.items()}
        assert_clean(generate(netplan, tmp_path, texts))
        for text in texts.values():
            if is_networkmanager(text):
                check_networkmanager(tmp_path, text)
            else:
                check_networkd(tmp_path, text)


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


def rendered_states() -> Iterator[tuple[str, NicState]]:
    yield "ipv4-only", nic()
    yield "all-digit-mac", nic(mac="12:34:56:00:00:01")
    yield (
        "dual-stack-two-subnets-card3",
        nic(
            network_card=3,
            device_number=7,
            ipv4_addresses=("10.0.1.10", "10.0.1.11"),
            ipv6_addresses=("2600:1f18:4a3:6902::10", "2600:1f18:4a3:6a00::7", "fd00:1::9"),
            ipv6_subnets=("2600:1f18:4a3:6902::/64", "2600:1f18:4a3:6a00::/56"),
            ipv4_prefixes=("10.0.1.128/28", "10.0.1.144/28"),
            ipv6_prefixes=("2600:1f18:4a3:6902:9d00::/80",),
        ),
    )
    yield (
        "fifty-secondaries",
        nic(ipv4_addresses=tuple(f"10.0.1.{i}" for i in range(10, 60))),
    )
    yield (
        "ipv6-prefix-only",
        nic(
            ipv6_subnets=("2600:1f18:4a3:6902::/64",),
            ipv6_prefixes=("2600:1f18:4a3:6902:9d00::/80",),
        ),
    )
    yield "no-subnet-no-gateway", nic(ipv4_subnet=None, ipv4_gateway=None)
    yield (
        "ipv6-only",
        nic(
            ipv4_addresses=(),
            ipv4_subnet=None,
            ipv4_gateway=None,
            ipv6_addresses=("2600:1f18:4a3:6906::10",),
            ipv6_subnets=("2600:1f18:4a3:6906::/64",),
        ),
    )
    yield (
        "primary",
        nic(
            primary=True,
            device_number=0,
            ipv4_addresses=("10.0.1.5", "10.0.1.6"),
            ipv6_addresses=("2600:1f18:4a3:6901::5",),
            ipv6_subnets=("2600:1f18:4a3:6901::/64",),
        ),
    )


STATES = list(rendered_states())


class TestRenderedStates:
    @pytest.mark.parametrize(("label", "state"), STATES, ids=[label for label, _ in STATES])
    def test_networkd_gets_the_tables_rules_and_metrics_of_the_state(
        self, netplan: str, tmp_path: Path, label: str, state: NicState
    ) -> None:
        renderer = NetplanRenderer()
        text = renderer.render(state)
        assert_clean(generate(netplan, tmp_path, {renderer.filename(state.mac): text}))
        path = check_networkd(tmp_path, text)

        routes, rules = network_routes(path), network_rules(path)
        if state.primary:
            assert routes == []
            assert rules == []
            assert network_values(path, "DHCP", "RouteMetric") == ["100"]
            return
        table = str(state.route_table)
        assert {r["Table"] for r in routes} <= {table}
        assert {(r["Table"], r["Priority"]) for r in rules} == {(table, str(state.rule_priority))}
        sources = {r["From"] for r in rules}
        assert {f"{a}/32" for a in state.ipv4_addresses} <= sources
        assert {f"{a}/128" for a in state.ipv6_addresses} <= sources
        assert {str(p) for p in state.ipv4_prefixes + state.ipv6_prefixes} <= sources
        assert network_values(path, "DHCP", "RouteMetric") == [str(state.route_metric)]

    @pytest.mark.parametrize(("label", "state"), STATES, ids=[label for label, _ in STATES])
    def test_networkmanager_gets_a_keyfile(
        self, netplan: str, tmp_path: Path, label: str, state: NicState
    ) -> None:
        renderer = NetplanRenderer(backend="NetworkManager")
        text = renderer.render(state)
        assert_clean(generate(netplan, tmp_path, {renderer.filename(state.mac): text}))
        parser = read_keyfile(keyfile(tmp_path, state.key))
        assert parser["ethernet"]["mac-address"] == state.mac
        if not state.primary:
            check_networkmanager(tmp_path, text)

    def test_the_installed_netplan_gets_ra_overrides_exactly_when_it_accepts_them(
        self, netplan: str, ra_table: bool, tmp_path: Path
    ) -> None:
        # What the daemon renders on this host (make_renderer probes the same netplan).
        state = dict(STATES)["dual-stack-two-subnets-card3"]
        renderer = NetplanRenderer(ra_table=ra_table)
        text = renderer.render(state)
        assert has_ra_overrides(text) is ra_table
        assert_clean(generate(netplan, tmp_path, {renderer.filename(state.mac): text}))
        path = check_networkd(tmp_path, text)
        tables = network_values(path, "IPv6AcceptRA", "RouteTable")
        assert tables == ([str(state.route_table)] if ra_table else [])

    def test_the_ipv6_subnet_route_reaches_the_table(self, netplan: str, tmp_path: Path) -> None:
        # The stand-in for RA routes in the table, which netplan 0.106 cannot place there.
        state = dict(STATES)["dual-stack-two-subnets-card3"]
        renderer = NetplanRenderer()
        assert_clean(
            generate(netplan, tmp_path, {renderer.filename(state.mac): renderer.render(state)})
        )
        routes = network_routes(network_file(tmp_path, state.key))
        ipv6 = {(r["Destination"], r["Table"]) for r in routes if ":" in r["Destination"]}
        table = str(state.route_table)
        assert ipv6 == {(str(s), table) for s in state.ipv6_subnets}


class TestOtherFilesAreLeftAlone:
    """Our drop-in must not change how interfaces from other netplan files are rendered."""

    CLOUD_INIT = "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n"
    NM_ALL = "network:\n  version: 2\n  renderer: NetworkManager\n"

    def test_our_networkmanager_file_keeps_cloud_inits_nic_on_networkd(
        self, netplan: str, tmp_path: Path
    ) -> None:
        ours = NetplanRenderer(backend="NetworkManager")
        files = {
            "50-cloud-init.yaml": self.CLOUD_INIT,
            ours.filename(nic().mac): ours.render(nic()),
        }
        assert_clean(generate(netplan, tmp_path, files))
        assert (tmp_path / "run" / "systemd" / "network" / "10-netplan-eth0.network").exists()
        assert keyfile(tmp_path, nic().key).exists()

    def test_our_networkd_file_keeps_a_networkmanager_host_on_networkmanager(
        self, netplan: str, tmp_path: Path
    ) -> None:
        ours = NetplanRenderer()
        files = {
            "01-network-manager-all.yaml": self.NM_ALL,
            "50-cloud-init.yaml": self.CLOUD_INIT,
            ours.filename(nic().mac): ours.render(nic()),
        }
        assert_clean(generate(netplan, tmp_path, files))
        connections = tmp_path / "run" / "NetworkManager" / "system-connections"
        assert (connections / "netplan-eth0.nmconnection").exists()
        assert not (tmp_path / "run" / "systemd" / "network" / "10-netplan-eth0.network").exists()
        assert network_file(tmp_path, nic().key).exists()
