"""find_conflicts for google-guest-agent (conflicts_gce.py) on a fake root holding its files.

The files have the agent's shapes: the structs it marshals, GoogleCloudPlatform/google-guest-
agent ``cmd/core_plugin/network/netplan/netplan.go`` (``netplanDropin``, written by yaml.v3:
4-space indent), ``networkd/networkd_linux.go`` (``networkdConfig``, ``dropinFile``),
``nm/nm_linux.go`` (``writeEthernetConfig``, go-ini's aligned ``key = value``) and the older
GoogleCloudPlatform/guest-agent ``google_guest_agent/network/manager`` (the ``[GuestAgent]``
section, ``mtu`` in the netplan entry, ``1-IF-`` networkd names). The last class runs the
real ``netplan generate`` to ground the advice: on a netplan host the agent's entry for a
NIC is applied instead of ours.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nicreconciled.conflicts import ADVICE, advice, find_conflicts
from nicreconciled.render.netplan import NetplanRenderer
from nicreconciled.render.networkd import NetworkdRenderer
from nicreconciled.sources.gce_parse import parse_nic

MAC = "42:01:c0:a8:01:02"
IFNAME = "eth1"
AGENT = "google-guest-agent"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gce"

NETPLAN = "run/netplan/20-google-guest-agent-ethernet.yaml"
NETPLAN_VLAN = "run/netplan/20-google-guest-agent-vlan.yaml"
KEYFILE = "etc/NetworkManager/system-connections/google-guest-agent-{ifname}.nmconnection"
NETWORKD = "usr/lib/systemd/network/{priority}-{ifname}-google-guest-agent.network"
DROPIN = "run/systemd/network/10-netplan-{id}.network.d/override.conf"
CONFIG = "etc/default/instance_configs.cfg"
UNIT = "usr/lib/systemd/system/google-guest-agent-manager.service"
WANTS = "etc/systemd/system/multi-user.target.wants/google-guest-agent-manager.service"


def netplan_entry(netdef_id: str, ifname: str, *, mtu: bool = False) -> str:
    """One ``ethernets`` entry of a secondary NIC (use-domains only on nic0)."""
    lines = [
        f"        {netdef_id}:",
        "            match:",
        f"                name: {ifname}",
        *(["            mtu: 1460"] if mtu else []),
        "            dhcp4: true",
        "            dhcp4-overrides:",
        "                use-domains: false",
        "            dhcp6-overrides:",
        "                use-domains: false",
    ]
    return "\n".join(lines) + "\n"


def netplan_file(*entries: str) -> str:
    return "network:\n    version: 2\n    ethernets:\n" + "".join(entries)


def keyfile(ifname: str) -> str:
    return (
        "[connection]\n"
        f"interface-name       = {ifname}\n"
        f"id                   = google-guest-agent-{ifname}\n"
        "type                 = ethernet\n"
        "autoconnect          = true\n"
        "autoconnect-priority = 100\n\n"
        "[ipv4]\nmethod = auto\n\n[ipv6]\nmethod = auto\n"
    )


def network_file(ifname: str, *, old: bool = False) -> str:
    head = "[GuestAgent]\nManagedByGuestAgent = true\n\n" if old else ""
    return (
        f"{head}[Match]\nName = {ifname}\n\n"
        "[Network]\nDHCP            = ipv4\nDNSDefaultRoute = false\n\n"
        "[DHCPv4]\nRoutesToDNS = false\nRoutesToNTP = false\n"
    )


def put(root: Path, rel: str, text: str = "") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def agent_lines(root: Path, ifname: str | None = IFNAME) -> list[str]:
    found = find_conflicts(MAC, ifname, root=root)
    assert all(line.startswith(f"{AGENT}: ") for line in found), found
    return found


class TestItsFiles:
    @pytest.mark.parametrize("netdef_id", ["eth1", "a-eth1"])
    def test_its_netplan_entry_is_found_by_name_and_reported_once(
        self, tmp_path: Path, netdef_id: str
    ) -> None:
        put(tmp_path, NETPLAN, netplan_file(netplan_entry(netdef_id, IFNAME)))
        (line,) = agent_lines(tmp_path)
        assert line == (
            f"{AGENT}: /{NETPLAN} ethernets.{netdef_id} matches name eth1 (netplan generate "
            f"makes it /run/systemd/network/10-netplan-{netdef_id}.network, which sorts before "
            "netplan's file for ours)"
        )
        assert advice(line) == ADVICE[AGENT]

    def test_another_nics_entry_in_the_same_file_is_not_this_nics(self, tmp_path: Path) -> None:
        text = netplan_file(netplan_entry("eth2", "eth2", mtu=True), netplan_entry("eth1", "eth1"))
        put(tmp_path, NETPLAN, text)
        assert [line.split()[2] for line in agent_lines(tmp_path)] == ["ethernets.eth1"]
        assert agent_lines(tmp_path, "eth3") == []

    def test_a_vlan_on_the_nic_is_reported(self, tmp_path: Path) -> None:
        put(
            tmp_path,
            NETPLAN_VLAN,
            "network:\n    version: 2\n    vlans:\n        gcp.eth1.10:\n            id: 10\n"
            "            link: eth1\n            dhcp4: true\n"
            "            macaddress: 42:01:0a:00:00:10\n            mtu: 1460\n",
        )
        (line,) = agent_lines(tmp_path)
        assert line == f"{AGENT}: /{NETPLAN_VLAN} vlans.gcp.eth1.10 is a VLAN on eth1"

    @pytest.mark.parametrize("netdef_id", ["eth1", "a-eth1"])
    def test_its_networkd_dropin_for_netplans_file_is_reported(
        self, tmp_path: Path, netdef_id: str
    ) -> None:
        put(tmp_path, DROPIN.format(id=netdef_id), network_file(IFNAME))
        (line,) = agent_lines(tmp_path)
        assert line == (
            f"{AGENT}: /{DROPIN.format(id=netdef_id)} adds DHCP to netplan's "
            f"10-netplan-{netdef_id}.network"
        )

    @pytest.mark.parametrize(
        "directory",
        [
            "etc/NetworkManager/system-connections",
            "run/NetworkManager/system-connections",
            "usr/lib/NetworkManager/system-connections",
        ],
    )
    def test_its_keyfile_is_reported_once_as_the_agents(
        self, tmp_path: Path, directory: str
    ) -> None:
        put(tmp_path, f"{directory}/google-guest-agent-eth1.nmconnection", keyfile(IFNAME))
        (line,) = agent_lines(tmp_path)
        assert line == (
            f"{AGENT}: /{directory}/google-guest-agent-eth1.nmconnection is bound to interface eth1"
        )
        assert agent_lines(tmp_path, "eth2") == []

    @pytest.mark.parametrize(("priority", "old"), [("20", False), ("1", True)])
    def test_its_networkd_file_is_reported_once_as_the_agents(
        self, tmp_path: Path, priority: str, old: bool
    ) -> None:
        rel = NETWORKD.format(priority=priority, ifname=IFNAME)
        put(tmp_path, rel, network_file(IFNAME, old=old))
        (line,) = agent_lines(tmp_path)
        assert line == f"{AGENT}: /{rel} matches Name=eth1"

    def test_a_networkd_file_masked_under_etc_is_not_reported(self, tmp_path: Path) -> None:
        put(tmp_path, NETWORKD.format(priority="20", ifname=IFNAME), network_file(IFNAME))
        mask = tmp_path / "etc/systemd/network/20-eth1-google-guest-agent.network"
        mask.parent.mkdir(parents=True)
        os.symlink(os.devnull, mask)
        assert agent_lines(tmp_path) == []

    def test_all_of_them_at_once_each_once(self, tmp_path: Path) -> None:
        put(tmp_path, NETPLAN, netplan_file(netplan_entry("eth1", IFNAME)))
        put(tmp_path, DROPIN.format(id="eth1"), network_file(IFNAME))
        put(tmp_path, KEYFILE.format(ifname=IFNAME), keyfile(IFNAME))
        put(tmp_path, NETWORKD.format(priority="20", ifname=IFNAME), network_file(IFNAME))
        put(tmp_path, NETWORKD.format(priority="1", ifname=IFNAME), network_file(IFNAME, old=True))
        found = agent_lines(tmp_path)
        assert len(found) == 5
        assert len({advice(line) for line in found}) == 1

    def test_without_the_interface_name_nothing_of_its_files_is_this_nics(
        self, tmp_path: Path
    ) -> None:
        put(tmp_path, NETPLAN, netplan_file(netplan_entry("eth1", IFNAME)))
        put(tmp_path, KEYFILE.format(ifname=IFNAME), keyfile(IFNAME))
        assert agent_lines(tmp_path, None) == []

    def test_an_unreadable_netplan_file_is_skipped(self, tmp_path: Path) -> None:
        put(tmp_path, NETPLAN, "network: [\n")
        assert agent_lines(tmp_path) == []


class TestTheGenericScannersLeaveThemAlone:
    """Without conflicts_gce these were reported as netplan:, networkmanager: and
    systemd-networkd: lines with the wrong advice (delete it: the agent writes it back)."""

    def test_no_generic_line_for_any_of_its_files(self, tmp_path: Path) -> None:
        put(tmp_path, NETPLAN, netplan_file(netplan_entry("eth1", IFNAME)))
        put(tmp_path, KEYFILE.format(ifname=IFNAME), keyfile(IFNAME))
        put(tmp_path, NETWORKD.format(priority="20", ifname=IFNAME), network_file(IFNAME))
        found = find_conflicts(MAC, IFNAME, root=tmp_path)
        prefixes = {line.partition(":")[0] for line in found}
        assert prefixes == {AGENT}, found

    def test_the_same_entry_in_another_netplan_file_is_still_a_netplan_conflict(
        self, tmp_path: Path
    ) -> None:
        put(
            tmp_path,
            "etc/netplan/20-google-guest-agent-ethernet.yaml",
            netplan_file(netplan_entry("eth1", IFNAME)),
        )
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert line.startswith("netplan: /etc/netplan/20-google-guest-agent-ethernet.yaml")

    def test_another_keyfile_bound_to_the_name_is_still_networkmanagers(
        self, tmp_path: Path
    ) -> None:
        put(tmp_path, "etc/NetworkManager/system-connections/eth1.nmconnection", keyfile(IFNAME))
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert line.startswith("networkmanager: ")


class TestTheAgentItself:
    def enable(self, root: Path) -> None:
        put(root, UNIT, "[Service]\nExecStart=/usr/bin/google_guest_agent_manager\n")
        link = root / WANTS
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/usr/lib/systemd/system/google-guest-agent-manager.service", link)

    def test_enabled_with_its_default_before_any_file(self, tmp_path: Path) -> None:
        self.enable(tmp_path)
        (line,) = agent_lines(tmp_path)
        assert line == (
            f"{AGENT}: google-guest-agent-manager.service is enabled with [NetworkInterfaces] "
            "setup = true (its default): it configures every secondary NIC the metadata lists, "
            "by interface name"
        )
        assert advice(line) == ADVICE[AGENT]

    def test_the_config_file_says_where_setup_is_true(self, tmp_path: Path) -> None:
        self.enable(tmp_path)
        put(
            tmp_path,
            CONFIG,
            "[NetworkInterfaces]\ndhcp_command =\nip_forwarding = true\nsetup = true\n",
        )
        (line,) = agent_lines(tmp_path)
        assert f"(/{CONFIG})" in line

    @pytest.mark.parametrize("value", ["false", "False", "no", "0", "off"])
    def test_setup_false_is_no_finding(self, tmp_path: Path, value: str) -> None:
        self.enable(tmp_path)
        put(tmp_path, CONFIG, f"[NetworkInterfaces]\nsetup = {value}\nip_forwarding = false\n")
        assert agent_lines(tmp_path) == []

    def test_a_later_distro_file_wins_as_the_agent_loads_them(self, tmp_path: Path) -> None:
        self.enable(tmp_path)
        put(tmp_path, CONFIG, "[NetworkInterfaces]\nsetup = false\n")
        put(tmp_path, f"{CONFIG}.distro", "[networkinterfaces]\nSetup = true\n")
        (line,) = agent_lines(tmp_path)
        assert f"(/{CONFIG}.distro)" in line

    def test_a_disabled_or_masked_unit_is_no_finding(self, tmp_path: Path) -> None:
        put(tmp_path, UNIT, "[Service]\n")
        assert agent_lines(tmp_path) == []  # installed, not enabled
        (tmp_path / UNIT).unlink()
        self.enable(tmp_path)
        mask = tmp_path / "etc/systemd/system/google-guest-agent-manager.service"
        os.symlink(os.devnull, mask)
        assert agent_lines(tmp_path) == []

    def test_its_files_left_over_with_setup_false_say_so(self, tmp_path: Path) -> None:
        self.enable(tmp_path)
        put(tmp_path, CONFIG, "[NetworkInterfaces]\nsetup = false\n")
        put(tmp_path, KEYFILE.format(ifname=IFNAME), keyfile(IFNAME))
        (line,) = agent_lines(tmp_path)
        assert line.endswith(f"(left over: setup = false in /{CONFIG}, it no longer removes it)")

    def test_with_its_files_the_unit_is_not_reported_again(self, tmp_path: Path) -> None:
        self.enable(tmp_path)
        put(tmp_path, KEYFILE.format(ifname=IFNAME), keyfile(IFNAME))
        (line,) = agent_lines(tmp_path)
        assert "nmconnection" in line


# --- the ordering claim, with the real netplan --------------------------------------------


def netplan_binary() -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which("netplan", path=search)
    if found is None:
        pytest.fail("netplan not found: install the Debian package netplan.io", pytrace=False)
    return found


def match_section(path: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    section = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Match" and "=" in line:
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).extend(value.split())
    return values


def matches(path: Path, mac: str, ifname: str) -> bool:
    """networkd's [Match] for the keys netplan writes: every key present must hold."""
    match = match_section(path)
    assert set(match) <= {"MACAddress", "PermanentMACAddress", "Name"}, (path, match)
    macs = [*match.get("MACAddress", []), *match.get("PermanentMACAddress", [])]
    if macs and mac not in (m.lower() for m in macs):
        return False
    names = match.get("Name", [])
    return not names or any(fnmatch.fnmatchcase(ifname, n) for n in names)


class TestOnANetplanHostTheAgentsEntryIsApplied:
    """The agent's entry and ours for the same NIC, through ``netplan generate``: networkd
    applies the first ``.network`` file (by name) that matches a link, and that is the
    agent's (DHCP only, no policy rules), not ours."""

    @pytest.mark.parametrize("netdef_id", ["eth1", "a-eth1"])
    def test_networkd_would_pick_the_agents_file_first(
        self, tmp_path: Path, netdef_id: str
    ) -> None:
        document = json.loads((FIXTURES / "three_nics.json").read_text())["document"]
        state = parse_nic(MAC, json.dumps(document)).state
        assert state is not None
        renderer = NetplanRenderer()
        ours = put(tmp_path, f"etc/netplan/{renderer.filename(MAC)}", renderer.render(state))
        agents = put(tmp_path, NETPLAN, netplan_file(netplan_entry(netdef_id, IFNAME, mtu=True)))
        for path in (ours, agents):
            path.chmod(0o600)
        result = subprocess.run(
            [netplan_binary(), "generate", "--root-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr

        generated = sorted((tmp_path / "run/systemd/network").glob("*.network"))
        matching = [p.name for p in generated if matches(p, MAC, IFNAME)]
        assert matching == [
            f"10-netplan-{netdef_id}.network",
            f"10-netplan-nicr-{state.key}.network",
        ]
        first, second = (tmp_path / "run/systemd/network" / n for n in matching)
        assert "RoutingPolicyRule" not in first.read_text()
        assert "DHCP=ipv4" in first.read_text()
        assert "[RoutingPolicyRule]" in second.read_text()
        # And the finding names the agent's entry on that very root.
        assert any(f"ethernets.{netdef_id}" in line for line in agent_lines(tmp_path))
        # With the networkd renderer ours sorts first: the agent's entry loses there.
        assert NetworkdRenderer().filename(MAC) < matching[0]
