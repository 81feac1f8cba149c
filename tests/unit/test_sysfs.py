"""Present links read from an injected /sys tree."""

from __future__ import annotations

from pathlib import Path

from nicreconciled.system import sysfs


def make_link(root: Path, name: str, mac: str, *, virtual: bool, kind: int = 1) -> None:
    parent = "devices/virtual/net" if virtual else "devices/pci0000:00/0000:00:05.0/net"
    dev = root / parent / name
    dev.mkdir(parents=True)
    (dev / "address").write_text(mac + "\n")
    (dev / "ifindex").write_text("7\n")
    (dev / "type").write_text(f"{kind}\n")
    (root / "class" / "net").mkdir(parents=True, exist_ok=True)
    (root / "class" / "net" / name).symlink_to(dev)


class TestLinks:
    def test_a_pci_nic_is_listed_with_its_mac_and_not_virtual(self, tmp_path: Path) -> None:
        make_link(tmp_path, "ens5", "0A:11:22:33:44:55", virtual=False)
        (link,) = sysfs.list_links(tmp_path)
        assert link == sysfs.Link("ens5", "0a:11:22:33:44:55", 7, virtual=False, ethernet=True)

    def test_virtual_devices_are_marked_virtual(self, tmp_path: Path) -> None:
        make_link(tmp_path, "veth0", "02:00:00:00:00:01", virtual=True)
        assert sysfs.list_links(tmp_path)[0].virtual

    def test_loopback_and_all_zero_macs_are_skipped(self, tmp_path: Path) -> None:
        make_link(tmp_path, "lo", "00:00:00:00:00:00", virtual=True, kind=772)
        make_link(tmp_path, "tun0", "", virtual=True, kind=65534)
        assert sysfs.list_links(tmp_path) == []

    def test_a_vanished_link_reads_as_none(self, tmp_path: Path) -> None:
        assert sysfs.read_link("gone", tmp_path) is None
        assert sysfs.read_link("../etc", tmp_path) is None

    def test_dmi_strings_are_read_stripped(self, tmp_path: Path) -> None:
        (tmp_path / "class/dmi/id").mkdir(parents=True)
        (tmp_path / "class/dmi/id/sys_vendor").write_text("Amazon EC2\n")
        assert sysfs.dmi("sys_vendor", tmp_path) == "Amazon EC2"
        assert sysfs.dmi("product_name", tmp_path) is None


def udev_entry(run: Path, ifindex: int, text: str) -> Path:
    path = run / "udev" / "data" / f"n{ifindex}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class TestUdevDatabase:
    def test_the_e_lines_of_the_entry_are_its_properties(self, tmp_path: Path) -> None:
        udev_entry(
            tmp_path,
            7,
            "S:disk/by-id/x\nI:123456\nE:ID_NET_MANAGED_BY=org.freedesktop.NetworkManager\n"
            "E:NM_UNMANAGED=1\nE:ID_NET_NAME=a=b\nE:=nokey\nE:NOVALUE\nG:systemd\nQ:systemd\nV:1\n",
        )
        assert sysfs.udev_properties(7, tmp_path) == {
            "ID_NET_MANAGED_BY": "org.freedesktop.NetworkManager",
            "NM_UNMANAGED": "1",
            "ID_NET_NAME": "a=b",
        }

    def test_no_entry_is_none_an_empty_one_has_no_properties(self, tmp_path: Path) -> None:
        assert sysfs.udev_properties(7, tmp_path) is None
        udev_entry(tmp_path, 7, "I:123\n")
        assert sysfs.udev_properties(7, tmp_path) == {}

    def test_an_entry_that_cannot_be_read_says_nothing(self, tmp_path: Path) -> None:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.write_text("E:NM_UNMANAGED=1\n")
        (tmp_path / "udev" / "data").mkdir(parents=True)
        (tmp_path / "udev" / "data" / "n7").symlink_to(elsewhere)  # never followed
        (tmp_path / "udev" / "data" / "n8").mkdir()
        udev_entry(tmp_path, 9, "E:NM_UNMANAGED=1\n" + "E:X=" + "y" * 300_000 + "\n")
        assert [sysfs.udev_properties(i, tmp_path) for i in (7, 8, 9)] == [{}, {}, {}]

    def test_udev_runs_when_its_control_socket_is_there(self, tmp_path: Path) -> None:
        assert not sysfs.udev_running(tmp_path)
        (tmp_path / "udev").mkdir()
        (tmp_path / "udev" / "control").touch()
        assert sysfs.udev_running(tmp_path)
