"""find_conflicts for systemd-networkd: other ``.network`` files matching the NIC, and
amazon-ec2-net-utils in all its shapes (upstream ``70-``, Debian's ``07-``, its udev rule)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nicreconciled.conflicts import ADVICE, advice, find_conflicts
from nicreconciled.render.networkd import NetworkdRenderer

MAC = "0a:1b:2c:3d:4e:5f"
OTHER_MAC = "0a:1b:2c:3d:4e:99"
IFNAME = "ens6"
RULE = "usr/lib/udev/rules.d/99-vpc-policy-routes.rules"


def put(root: Path, rel: str, text: str = "") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def link(root: Path, rel: str, target: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


class TestOtherNetworkFiles:
    @pytest.mark.parametrize(
        "directory",
        [
            "etc/systemd/network",
            "run/systemd/network",
            "usr/lib/systemd/network",
            "lib/systemd/network",
        ],
    )
    def test_a_file_matching_the_mac_is_found_in_every_directory(
        self, tmp_path: Path, directory: str
    ) -> None:
        put(tmp_path, f"{directory}/20-eni.network", f"[Match]\nMACAddress={MAC.upper()}\n")
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert line == f"systemd-networkd: /{directory}/20-eni.network matches MACAddress={MAC}"
        assert advice(line) == ADVICE["systemd-networkd"]

    @pytest.mark.parametrize(
        "value",
        [MAC, MAC.replace(":", "-"), "0a1b.2c3d.4e5f", f"{OTHER_MAC} {MAC}", MAC.upper()],
    )
    def test_every_mac_notation_and_list_position_counts(self, tmp_path: Path, value: str) -> None:
        put(
            tmp_path,
            "etc/systemd/network/20-eni.network",
            f"[Match]\nPermanentMACAddress={value}\n",
        )
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert line.endswith(f"matches PermanentMACAddress={MAC}")

    def test_the_exact_interface_name_counts(self, tmp_path: Path) -> None:
        put(tmp_path, "etc/systemd/network/20-ens6.network", "[Match]\nName=ens6\n")
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert line.endswith("matches Name=ens6")

    def test_a_catch_all_counts_only_when_it_sorts_before_our_files(self, tmp_path: Path) -> None:
        put(tmp_path, "etc/systemd/network/01-all.network", "[Match]\nName=*\n")
        put(tmp_path, "usr/lib/systemd/network/80-ec2.network", "[Match]\nName=ens*\n")
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert line == (
            "systemd-networkd: /etc/systemd/network/01-all.network matches Name=* and sorts"
            " before 05-nicreconciled-*.network"
        )

    def test_an_inverted_name_list_or_another_mac_is_not_a_conflict(self, tmp_path: Path) -> None:
        put(tmp_path, "etc/systemd/network/01-a.network", "[Match]\nName=!ens6\n")
        put(tmp_path, "etc/systemd/network/01-b.network", f"[Match]\nMACAddress={OTHER_MAC}\n")
        put(tmp_path, "etc/systemd/network/01-c.network", "[Match]\nDriver=ena\n")
        assert find_conflicts(MAC, IFNAME, root=tmp_path) == []

    def test_an_empty_assignment_resets_the_list(self, tmp_path: Path) -> None:
        text = f"[Match]\nMACAddress={MAC}\nMACAddress=\nMACAddress={OTHER_MAC}\n"
        put(tmp_path, "etc/systemd/network/20-x.network", text)
        assert find_conflicts(MAC, IFNAME, root=tmp_path) == []

    def test_only_the_match_section_counts(self, tmp_path: Path) -> None:
        text = f"[Match]\nName=eth9\n[Link]\nMACAddress={MAC}\n"
        put(tmp_path, "etc/systemd/network/20-x.network", text)
        assert find_conflicts(MAC, IFNAME, root=tmp_path) == []

    def test_a_file_masked_by_the_same_name_in_etc_is_not_read(self, tmp_path: Path) -> None:
        put(tmp_path, "usr/lib/systemd/network/20-x.network", f"[Match]\nMACAddress={MAC}\n")
        link(tmp_path, "etc/systemd/network/20-x.network", "/dev/null")
        assert find_conflicts(MAC, IFNAME, root=tmp_path) == []

    def test_ours_and_netplans_generated_files_are_not_conflicts(self, tmp_path: Path) -> None:
        ours = NetworkdRenderer().filename(MAC)
        put(tmp_path, f"run/systemd/network/{ours}", f"[Match]\nMACAddress={MAC}\n")
        put(
            tmp_path,
            "run/systemd/network/10-netplan-nicr-0a1b2c3d4e5f.network",
            f"[Match]\nPermanentMACAddress={MAC}\n",
        )
        assert find_conflicts(MAC, IFNAME, root=tmp_path) == []


class TestAmazonEc2NetUtils:
    DIR = "run/systemd/network"

    @pytest.mark.parametrize("prefix", ["70-", "07-"])
    def test_its_file_is_found_under_both_its_names(self, tmp_path: Path, prefix: str) -> None:
        link(
            tmp_path, f"{self.DIR}/{prefix}ens6.network", "/usr/lib/systemd/network/80-ec2.network"
        )
        put(tmp_path, f"{self.DIR}/{prefix}ens6.network.d/eni.conf", f"[Match]\nMACAddress={MAC}\n")
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert line == (
            f"amazon-ec2-net-utils: /{self.DIR}/{prefix}ens6.network (policy-routes@ens6.service)"
            " configures this NIC"
        )

    def test_debians_drop_in_finds_it_by_mac_after_a_rename(self, tmp_path: Path) -> None:
        put(tmp_path, f"{self.DIR}/07-eth1.network.d/eni.conf", f"[Match]\nMACAddress={MAC}\n")
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert "07-eth1.network (policy-routes@eth1.service)" in line

    def test_its_udev_rule_is_reported_before_any_file_exists(self, tmp_path: Path) -> None:
        put(tmp_path, RULE, 'SUBSYSTEM=="net", ACTION=="add", RUN+="..."\n')
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert line == (
            f"amazon-ec2-net-utils: /{RULE} starts policy-routes@ens6.service for every ena,"
            " ixgbevf or vif NIC that is attached"
        )
        assert advice(line) == ADVICE["amazon-ec2-net-utils"]

    def test_the_rule_adds_no_second_line_once_its_file_is_there(self, tmp_path: Path) -> None:
        put(tmp_path, RULE, "#\n")
        put(tmp_path, f"{self.DIR}/07-ens6.network", "[Match]\n")
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert "07-ens6.network" in line

    @pytest.mark.parametrize(
        "mask",
        [
            "etc/systemd/system/policy-routes@.service",
            "run/systemd/system/policy-routes@.service",
            "etc/udev/rules.d/99-vpc-policy-routes.rules",
        ],
    )
    def test_a_masked_unit_or_rule_is_not_reported(self, tmp_path: Path, mask: str) -> None:
        put(tmp_path, RULE, "#\n")
        link(tmp_path, mask, "/dev/null")
        assert find_conflicts(MAC, IFNAME, root=tmp_path) == []

    def test_an_overriding_rule_in_etc_is_reported_there(self, tmp_path: Path) -> None:
        put(tmp_path, RULE, "#\n")
        put(tmp_path, "etc/udev/rules.d/99-vpc-policy-routes.rules", "# edited copy\n")
        (line,) = find_conflicts(MAC, IFNAME, root=tmp_path)
        assert line.startswith("amazon-ec2-net-utils: /etc/udev/rules.d/99-vpc-policy-routes.rules")

    def test_its_files_are_not_reported_twice_as_network_files(self, tmp_path: Path) -> None:
        put(tmp_path, f"{self.DIR}/07-ens6.network", "[Match]\nName=ens6\n")
        put(tmp_path, f"{self.DIR}/07-ens6.network.d/eni.conf", f"[Match]\nMACAddress={MAC}\n")
        tools = [line.partition(":")[0] for line in find_conflicts(MAC, IFNAME, root=tmp_path)]
        assert tools == ["amazon-ec2-net-utils"]
