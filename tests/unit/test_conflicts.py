"""find_conflicts: other tools' configuration for the same NIC, found in a fixture root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nicreconciled.conflicts import ADVICE, advice, find_conflicts

MAC = "0a:1b:2c:3d:4e:5f"
OTHER_MAC = "0a:1b:2c:3d:4e:99"
IFNAME = "ens6"


def put(root: Path, rel: str, text: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def nm_profile(
    *, mac: str | None = None, ifname: str | None = None, group: str = "ethernet"
) -> str:
    lines = ["[connection]", "id=cloud-init eth1", "type=ethernet"]
    if ifname is not None:
        lines.append(f"interface-name={ifname}")
    lines += ["", f"[{group}]"]
    if mac is not None:
        lines.append(f"mac-address={mac}")
    return "\n".join(lines) + "\n"


def netplan_doc(body: str) -> str:
    return "network:\n  version: 2\n  ethernets:\n" + body


class TestNothingToFind:
    def test_an_empty_root_has_no_conflicts(self, tmp_path: Path) -> None:
        assert find_conflicts(MAC, IFNAME, root=tmp_path) == []

    def test_an_invalid_mac_is_a_value_error(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="MAC"):
            find_conflicts("nope", IFNAME, root=tmp_path)


class TestNetworkManager:
    @pytest.mark.parametrize(
        "directory",
        [
            "etc/NetworkManager/system-connections",
            "run/NetworkManager/system-connections",
            "usr/lib/NetworkManager/system-connections",
        ],
    )
    def test_a_profile_bound_to_the_mac_is_found_in_every_directory(
        self, tmp_path: Path, directory: str
    ) -> None:
        put(tmp_path, f"{directory}/cloud-init-eth1.nmconnection", nm_profile(mac=MAC.upper()))
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert line == (
            f"networkmanager: /{directory}/cloud-init-eth1.nmconnection "
            f"(profile 'cloud-init eth1') is bound to MAC {MAC}"
        )

    @pytest.mark.parametrize(
        "extra", ["\n[.nmmeta]\nnm-generated=true\n", "\n[connection]\nautoconnect-priority=-999\n"]
    )
    def test_networkmanagers_own_wired_connection_is_not_a_conflict(
        self, tmp_path: Path, extra: str
    ) -> None:
        text = (
            "[connection]\nid=Wired connection 2\ntype=ethernet\n"
            f"interface-name={IFNAME}\n"
            + ("autoconnect-priority=-999\n" if "priority" in extra else "")
            + ("\n[.nmmeta]\nnm-generated=true\n" if "nmmeta" in extra else "")
        )
        put(tmp_path, "run/NetworkManager/system-connections/Wired connection 2.nmconnection", text)
        assert find_conflicts(MAC, IFNAME, root=tmp_path) == []

    def test_the_old_group_name_and_byte_list_mac_are_understood(self, tmp_path: Path) -> None:
        text = nm_profile(mac="10;27;44;61;78;95;", group="802-3-ethernet")
        put(tmp_path, "etc/NetworkManager/system-connections/old", text)
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert "is bound to MAC" in line

    def test_a_profile_bound_to_the_interface_name_is_found(self, tmp_path: Path) -> None:
        put(
            tmp_path,
            "etc/NetworkManager/system-connections/a.nmconnection",
            nm_profile(ifname=IFNAME),
        )
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert line.endswith(f"is bound to interface {IFNAME}")

    def test_a_name_binding_does_not_match_when_the_nic_has_no_name(self, tmp_path: Path) -> None:
        put(
            tmp_path,
            "etc/NetworkManager/system-connections/a.nmconnection",
            nm_profile(ifname=IFNAME),
        )
        assert find_conflicts(MAC, None, root=tmp_path) == []

    def test_profiles_for_other_nics_are_not_conflicts(self, tmp_path: Path) -> None:
        d = "etc/NetworkManager/system-connections"
        put(tmp_path, f"{d}/other.nmconnection", nm_profile(mac=OTHER_MAC, ifname="ens7"))
        put(tmp_path, f"{d}/unbound.nmconnection", nm_profile())
        assert find_conflicts(MAC, IFNAME, root=tmp_path) == []

    def test_our_own_profile_and_netplans_generated_ones_are_skipped(self, tmp_path: Path) -> None:
        d = "run/NetworkManager/system-connections"
        put(tmp_path, f"{d}/nicreconciled-0a1b2c3d4e5f.nmconnection", nm_profile(mac=MAC))
        put(tmp_path, f"{d}/netplan-nicr-0a1b2c3d4e5f.nmconnection", nm_profile(mac=MAC))
        assert find_conflicts(MAC, IFNAME, root=tmp_path) == []

    @pytest.mark.parametrize(
        "garbage",
        [
            b"\x00\xff\xfe binary",
            "no section header\nmac-address=" + MAC,
            "[ethernet\nmac-address=" + MAC,
            "[ethernet]\nmac-address=not-a-mac\n",
            "[ethernet]\nmac-address=300;1;2;3;4;x;\n",
        ],
    )
    def test_garbage_is_skipped_without_raising(self, tmp_path: Path, garbage: str | bytes) -> None:
        put(tmp_path, "etc/NetworkManager/system-connections/bad.nmconnection", garbage)
        assert find_conflicts(MAC, IFNAME, root=tmp_path) == []

    def test_repeated_keys_and_sections_do_not_stop_the_scan(self, tmp_path: Path) -> None:
        text = nm_profile(mac=MAC) + "[ethernet]\nmtu=9001\nmtu=1500\n"
        put(tmp_path, "etc/NetworkManager/system-connections/dup.nmconnection", text)
        assert len(find_conflicts(MAC, IFNAME, root=tmp_path)) == 1

    def test_directories_and_dangling_links_are_skipped(self, tmp_path: Path) -> None:
        d = tmp_path / "etc/NetworkManager/system-connections"
        (d / "a-directory.nmconnection").mkdir(parents=True)
        os.symlink(tmp_path / "nowhere", d / "dangling.nmconnection")
        assert find_conflicts(MAC, IFNAME, root=tmp_path) == []

    def test_an_unreadable_directory_is_skipped(self, tmp_path: Path) -> None:
        put(tmp_path, "etc/NetworkManager/system-connections", "a file where a dir should be")
        assert find_conflicts(MAC, IFNAME, root=tmp_path) == []


class TestNetplan:
    CLOUD_INIT = netplan_doc(
        "    ens6:\n"
        "      match:\n"
        "        macaddress: 0A:1B:2C:3D:4E:5F\n"
        "      set-name: ens6\n"
        "      dhcp4: true\n"
    )

    @pytest.mark.parametrize("directory", ["etc/netplan", "run/netplan", "lib/netplan"])
    def test_a_definition_matching_the_mac_is_found_in_every_directory(
        self, tmp_path: Path, directory: str
    ) -> None:
        put(tmp_path, f"{directory}/50-cloud-init.yaml", self.CLOUD_INIT)
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert line == (
            f"netplan: /{directory}/50-cloud-init.yaml ethernets.ens6 matches MAC {MAC}, "
            "sets the name ens6"
        )

    def test_a_definition_without_match_is_the_interface_name(self, tmp_path: Path) -> None:
        put(tmp_path, "etc/netplan/01-net.yaml", netplan_doc("    ens6:\n      dhcp4: true\n"))
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert line.endswith("ethernets.ens6 configures interface ens6")

    def test_a_name_glob_that_covers_the_nic_is_found(self, tmp_path: Path) -> None:
        body = "    all-en:\n      match:\n        name: 'en*'\n      dhcp4: true\n"
        put(tmp_path, "etc/netplan/01-net.yaml", netplan_doc(body))
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert line.endswith("ethernets.all-en matches name 'en*'")

    def test_a_driver_match_is_reported_as_possible(self, tmp_path: Path) -> None:
        body = "    ena:\n      match:\n        driver: ena\n      dhcp4: true\n"
        put(tmp_path, "etc/netplan/01-net.yaml", netplan_doc(body))
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert "matches driver 'ena' (if this NIC uses it)" in line

    def test_a_set_name_equal_to_the_nic_name_is_found(self, tmp_path: Path) -> None:
        body = "    x:\n      match:\n        driver: virtio_net\n      set-name: ens6\n"
        put(tmp_path, "etc/netplan/01-net.yaml", netplan_doc(body))
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert line.endswith("sets the name ens6")

    @pytest.mark.parametrize(
        "body",
        [
            "    ens5:\n      dhcp4: true\n",
            "    other:\n      match:\n        macaddress: 0a:1b:2c:3d:4e:99\n",
            # Conditions are ANDed: a name glob that fits does not help a wrong MAC.
            "    x:\n      match:\n        macaddress: 0a:1b:2c:3d:4e:99\n        name: 'en*'\n",
            "    x:\n      match:\n        name: 'eth*'\n",
            "    x:\n      match: not-a-mapping\n",
            "    x: just-a-string\n",
        ],
    )
    def test_definitions_for_other_nics_are_not_conflicts(self, tmp_path: Path, body: str) -> None:
        put(tmp_path, "etc/netplan/01-net.yaml", netplan_doc(body))
        assert find_conflicts(MAC, IFNAME, root=tmp_path) == []

    def test_a_name_glob_does_not_match_when_the_nic_has_no_name(self, tmp_path: Path) -> None:
        body = "    all-en:\n      match:\n        name: 'en*'\n"
        put(tmp_path, "etc/netplan/01-net.yaml", netplan_doc(body))
        assert find_conflicts(MAC, None, root=tmp_path) == []

    def test_our_own_file_is_skipped(self, tmp_path: Path) -> None:
        put(tmp_path, "run/netplan/90-nicreconciled-0a1b2c3d4e5f.yaml", self.CLOUD_INIT)
        assert find_conflicts(MAC, IFNAME, root=tmp_path) == []

    def test_only_yaml_files_are_read_as_netplan_reads_them(self, tmp_path: Path) -> None:
        put(tmp_path, "etc/netplan/50-cloud-init.yaml.bak", self.CLOUD_INIT)
        assert find_conflicts(MAC, IFNAME, root=tmp_path) == []

    @pytest.mark.parametrize(
        "garbage",
        [
            "network: [unclosed",
            "- a list\n- not a mapping\n",
            "network: 3\n",
            "network:\n  ethernets: [a, b]\n",
            "",
            b"\xff\xfe\x00\x01",
        ],
    )
    def test_garbage_is_skipped_without_raising(self, tmp_path: Path, garbage: str | bytes) -> None:
        put(tmp_path, "etc/netplan/00-bad.yaml", garbage)
        put(tmp_path, "etc/netplan/50-cloud-init.yaml", self.CLOUD_INIT)
        # The good file after the bad one is still read.
        assert len(find_conflicts(MAC, IFNAME, root=tmp_path)) == 1


class TestAmazonEc2NetUtils:
    DIR = "run/systemd/network"

    def test_its_network_file_for_the_interface_is_found_even_as_a_dangling_link(
        self, tmp_path: Path
    ) -> None:
        d = tmp_path / self.DIR
        d.mkdir(parents=True)
        os.symlink("/usr/lib/systemd/network/80-ec2.network", d / "70-ens6.network")
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert line == (
            f"amazon-ec2-net-utils: /{self.DIR}/70-ens6.network (policy-routes@ens6.service) "
            "configures this NIC"
        )

    def test_its_drop_in_directory_alone_is_found(self, tmp_path: Path) -> None:
        put(tmp_path, f"{self.DIR}/70-ens6.network.d/ec2net_policy_4.conf", "[RoutingPolicyRule]\n")
        assert len(find_conflicts(MAC, IFNAME, root=tmp_path)) == 1

    def test_the_mac_in_its_eni_drop_in_finds_it_after_a_rename(self, tmp_path: Path) -> None:
        eni = f"[Match]\nMACAddress={MAC}\n[Network]\nDHCP=yes\n"
        put(tmp_path, f"{self.DIR}/70-eth1.network.d/eni.conf", eni)
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert "70-eth1.network (policy-routes@eth1.service)" in line

    def test_file_and_drop_in_of_one_interface_are_one_line(self, tmp_path: Path) -> None:
        put(tmp_path, f"{self.DIR}/70-ens6.network", "[Match]\n")
        put(tmp_path, f"{self.DIR}/70-ens6.network.d/eni.conf", f"[Match]\nMACAddress={MAC}\n")
        assert len(find_conflicts(MAC, IFNAME, root=tmp_path)) == 1

    def test_other_interfaces_files_are_not_conflicts(self, tmp_path: Path) -> None:
        put(tmp_path, f"{self.DIR}/70-ens7.network", "[Match]\n")
        put(
            tmp_path, f"{self.DIR}/70-ens7.network.d/eni.conf", f"[Match]\nMACAddress={OTHER_MAC}\n"
        )
        put(tmp_path, f"{self.DIR}/10-netplan-ens6.network", "[Match]\n")
        assert find_conflicts(MAC, IFNAME, root=tmp_path) == []


class TestCloudInitHotplug:
    def test_the_hotplug_udev_rule_is_found(self, tmp_path: Path) -> None:
        put(tmp_path, "etc/udev/rules.d/90-cloud-init-hook-hotplug.rules", "# cloud-init\n")
        (line,) = find_conflicts(MAC, None, root=tmp_path)
        assert line.startswith("cloud-init: /etc/udev/rules.d/90-cloud-init-hook-hotplug.rules")


class TestSeveralAndAdvice:
    def test_every_tool_is_reported_once_in_a_fixed_order(self, tmp_path: Path) -> None:
        put(tmp_path, "etc/udev/rules.d/90-cloud-init-hook-hotplug.rules", "#\n")
        put(tmp_path, "run/systemd/network/70-ens6.network", "[Match]\n")
        put(tmp_path, "etc/netplan/50-cloud-init.yaml", TestNetplan.CLOUD_INIT)
        put(tmp_path, "etc/NetworkManager/system-connections/x.nmconnection", nm_profile(mac=MAC))
        tools = [line.partition(":")[0] for line in find_conflicts(MAC, IFNAME, root=tmp_path)]
        assert tools == ["networkmanager", "netplan", "amazon-ec2-net-utils", "cloud-init"]

    @pytest.mark.parametrize("tool", sorted(ADVICE))
    def test_each_line_gets_its_tools_advice(self, tool: str) -> None:
        assert advice(f"{tool}: /some/file configures this NIC") == ADVICE[tool]

    def test_an_unknown_line_gets_generic_advice(self) -> None:
        assert "only one tool" in advice("something else")
