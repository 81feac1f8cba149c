"""VR discovery on fixture trees: each method alone, their precedence, per-NIC leases, and
the one-line report when nothing answers."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from nicreconciled.errors import FetchError
from nicreconciled.sources.vr_discovery import (
    Candidate,
    Check,
    Lease,
    Resolver,
    Route,
    VrDiscovery,
    parse_default_routes,
    parse_dhclient_leases,
    parse_networkd_lease,
    parse_nmcli_dhcp4,
    system_resolver,
)
from nicreconciled.system.proc import Completed

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cloudstack"
NM_UUID = "6604b755-b04f-33a3-8a74-8eec86f491b6"
MAC0 = "52:54:00:00:ab:01"
MAC1 = "52:54:00:00:ab:02"


class Tree:
    """A fake root: links under sys/, DHCP client files, proc/net/route."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def link(self, name: str, mac: str, ifindex: int, *, virtual: bool = False) -> Tree:
        parent = (
            "devices/virtual/net" if virtual else f"devices/pci0000:00/0000:00:0{ifindex}.0/net"
        )
        dev = self.root / "sys" / parent / name
        dev.mkdir(parents=True)
        (dev / "address").write_text(f"{mac}\n")
        (dev / "ifindex").write_text(f"{ifindex}\n")
        (dev / "type").write_text("1\n")
        (self.root / "sys/class/net").mkdir(parents=True, exist_ok=True)
        (self.root / "sys/class/net" / name).symlink_to(dev)
        return self

    def unlink(self, name: str) -> None:
        (self.root / "sys/class/net" / name).unlink()

    def write(self, path: str, text: str, *, age: float = 0.0) -> Path:
        """Write TEXT at PATH under the root; AGE seconds into the past (mtime)."""
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if age:
            stamp = target.stat().st_mtime - age
            os.utime(target, (stamp, stamp))
        return target

    def copy(self, path: str, fixture: str, *, age: float = 0.0) -> Path:
        return self.write(path, (FIXTURES / fixture).read_text(), age=age)

    def networkd(self, ifindex: int, **values: str) -> None:
        self.write(
            f"run/systemd/netif/leases/{ifindex}",
            "".join(f"{k.upper()}={v}\n" for k, v in values.items()),
        )

    def routes(self, *routes: tuple[str, str | None, int]) -> None:
        """(ifname, gateway or None, metric) default routes in /proc/net/route's format."""
        lines = ["Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU"]
        for ifname, gateway, metric in routes:
            hexgw = f"{int.from_bytes(IPv4Address(gateway or '0.0.0.0').packed, 'little'):08X}"
            flags = "0003" if gateway else "0001"
            lines.append(f"{ifname}\t00000000\t{hexgw}\t{flags}\t0\t0\t{metric}\t00000000\t0")
        self.write("proc/net/route", "\n".join(lines) + "\n")


class FakeRunner:
    """Canned nmcli answers: argv's last word (the interface, or "show") -> Completed."""

    def __init__(
        self, outputs: dict[str, str] | None = None, *, returncode: int = 0, stderr: str = ""
    ) -> None:
        self.outputs = outputs or {}
        self.returncode = returncode
        self.stderr = stderr
        self.calls: list[tuple[str, ...]] = []

    async def __call__(self, argv: Sequence[str], *, timeout: float = 30.0) -> Completed:
        self.calls.append(tuple(argv))
        if self.returncode:
            return Completed(tuple(argv), self.returncode, "", self.stderr)
        key = argv[-1]
        if key not in self.outputs:
            return Completed(tuple(argv), 10, "", f"Error: Device '{key}' not found.")
        return Completed(tuple(argv), 0, self.outputs[key], "")


def nmcli_missing() -> FakeRunner:
    return FakeRunner(returncode=127, stderr="cannot start: No such file or directory")


def resolver(*answers: str, error: OSError | None = None) -> Resolver:
    async def resolve(name: str) -> list[str]:
        assert name == "data-server"
        if error is not None:
            raise error
        return list(answers)

    return resolve


NXDOMAIN = socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def alive(*urls: str) -> tuple[list[str], Check]:
    """A liveness check accepting URLS; it records every URL it was asked about."""
    asked: list[str] = []

    async def check(url: str) -> str | None:
        asked.append(url)
        return None if url in urls else "did not answer (cannot connect)"

    return asked, check


def discovery(
    tree: Tree,
    *,
    endpoint: str = "",
    runner: FakeRunner | None = None,
    resolve: Resolver | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> VrDiscovery:
    return VrDiscovery(
        endpoint,
        root=tree.root,
        runner=runner or nmcli_missing(),
        resolver=resolve or resolver(error=NXDOMAIN),
        dns_timeout=0.3,
        clock=clock,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path).link("eth0", MAC0, 2).link("eth1", MAC1, 3)


async def find(d: VrDiscovery, *urls: str) -> Candidate:
    _, check = alive(*urls)
    return await d.find(check)


# --- parsers ------------------------------------------------------------------------------


class TestParsers:
    def test_networkd_lease_gives_address_prefix_router_and_server(self) -> None:
        text = (FIXTURES / "leases/networkd-2").read_text()
        assert parse_networkd_lease(text, "eth0") == Lease(
            "eth0",
            "networkd",
            IPv4Address("10.1.1.23"),
            24,
            IPv4Address("10.1.1.1"),
            IPv4Address("10.1.1.1"),
        )

    def test_networkd_router_list_uses_the_first_and_garbage_is_ignored(self) -> None:
        lease = parse_networkd_lease(
            "ADDRESS=10.0.0.5\nNETMASK=255.0.255.0\nROUTER=10.0.0.1 10.0.0.2\n"
            "SERVER_ADDRESS=nope\n",
            "x",
        )
        assert (lease.router, lease.prefixlen, lease.server) == (
            IPv4Address("10.0.0.1"),
            None,
            None,
        )

    def test_dhclient_last_unexpired_lease_of_each_interface_wins(self) -> None:
        text = (FIXTURES / "leases/dhclient.eth0.leases").read_text()
        leases = parse_dhclient_leases(text, now=1_700_000_000)
        assert leases["eth0"] == Lease(
            "eth0",
            "dhclient",
            IPv4Address("10.1.1.23"),
            24,
            IPv4Address("10.1.1.1"),
            IPv4Address("10.1.1.2"),
        )
        assert leases["eth1"].server == IPv4Address("10.2.2.1")
        assert leases["eth1"].router is None
        assert set(leases) == {"eth0", "eth1"}  # the lease6 block is not a DHCPv4 lease

    def test_dhclient_expiry_is_judged_against_now(self) -> None:
        text = (FIXTURES / "leases/dhclient.eth0.leases").read_text()
        # Before 2021-03-03 the later 10.1.1.77 lease was still valid, and it is the last.
        assert parse_dhclient_leases(text, now=1_600_000_000)["eth0"].address == IPv4Address(
            "10.1.1.77"
        )
        # After 2100 the epoch-dated lease has expired too; "expire never" remains.
        assert parse_dhclient_leases(text, now=4_200_000_000)["eth0"].address == IPv4Address(
            "10.1.1.50"
        )

    def test_nmcli_options_of_one_device(self) -> None:
        text = (FIXTURES / "nmcli/eth0.txt").read_text()
        lease = parse_nmcli_dhcp4(text, "eth0")["eth0"]
        assert lease == Lease(
            "eth0",
            "NetworkManager",
            IPv4Address("10.1.1.23"),
            24,
            IPv4Address("10.1.1.1"),
            IPv4Address("10.1.1.1"),
        )

    def test_nmcli_options_of_every_device(self) -> None:
        leases = parse_nmcli_dhcp4((FIXTURES / "nmcli/all.txt").read_text())
        assert set(leases) == {"eth0", "eth1"}
        assert leases["eth1"].server == IPv4Address("10.2.2.1")

    def test_default_routes_are_little_endian_and_sorted_by_metric(self) -> None:
        routes = parse_default_routes((FIXTURES / "proc/route").read_text())
        assert routes == [
            Route("eth0", IPv4Address("10.1.1.1"), 100),
            Route("eth1", IPv4Address("10.2.2.1"), 612),
        ]

    def test_a_default_route_without_gateway_still_names_its_interface(self) -> None:
        text = (
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
            "ppp0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\n"
        )
        assert parse_default_routes(text) == [Route("ppp0", None, 0)]


# --- each method alone --------------------------------------------------------------------


class TestMethods:
    async def test_configured_endpoint(self, tree: Tree) -> None:
        d = discovery(tree, endpoint="http://192.0.2.10:8080")
        assert await find(d, "http://192.0.2.10:8080") == Candidate(
            "http://192.0.2.10:8080", "endpoint", "configured"
        )

    async def test_data_server_dns_name(self, tree: Tree) -> None:
        d = discovery(tree, resolve=resolver("10.1.1.1", "10.1.1.1", "not-an-ip"))
        assert await find(d, "http://10.1.1.1") == Candidate(
            "http://10.1.1.1", "data-server", "data-server"
        )

    async def test_the_system_resolver_asks_getaddrinfo_for_ipv4(self) -> None:
        assert "127.0.0.1" in await system_resolver("localhost")

    async def test_networkd_lease(self, tree: Tree) -> None:
        tree.copy("run/systemd/netif/leases/2", "leases/networkd-2")
        d = discovery(tree)
        assert await find(d, "http://10.1.1.1") == Candidate(
            "http://10.1.1.1", "networkd leases", "eth0"
        )
        lease = await d.leases_for("eth0")
        assert lease is not None
        assert (lease.source, lease.address, str(lease.network)) == (
            "networkd",
            IPv4Address("10.1.1.23"),
            "10.1.1.0/24",
        )

    async def test_dhclient_leases_last_wins(self, tree: Tree) -> None:
        tree.copy("var/lib/dhcp/dhclient.eth0.leases", "leases/dhclient.eth0.leases")
        d = discovery(tree)
        # eth0's last unexpired lease names 10.1.1.2, not the earlier 10.1.1.1.
        assert await find(d, "http://10.1.1.2", "http://10.1.1.1") == Candidate(
            "http://10.1.1.2", "dhclient leases", "eth0"
        )

    async def test_networkmanagers_dhclient_lease_files_count_too(self, tmp_path: Path) -> None:
        tree = Tree(tmp_path).link("ens3", MAC0, 2)
        tree.copy(
            f"var/lib/NetworkManager/dhclient-{NM_UUID}-ens3.lease", "leases/dhclient-nm.lease"
        )
        d = discovery(tree)
        assert await find(d, "http://10.3.3.1") == Candidate(
            "http://10.3.3.1", "dhclient leases", "ens3"
        )

    async def test_networkmanager_internal_client_via_nmcli(self, tree: Tree) -> None:
        runner = FakeRunner({"show": (FIXTURES / "nmcli/all.txt").read_text()})
        d = discovery(tree, runner=runner)
        assert await find(d, "http://10.1.1.1") == Candidate(
            "http://10.1.1.1", "NetworkManager", "eth0"
        )
        assert runner.calls == [("nmcli", "-t", "-f", "GENERAL.DEVICE,DHCP4", "device", "show")]

    async def test_networkmanager_lease_file_when_nmcli_is_missing(self, tree: Tree) -> None:
        # The systemd-based internal client (NetworkManager < 1.20) recorded the server.
        tree.copy(
            f"var/lib/NetworkManager/internal-{NM_UUID}-eth0.lease",
            "leases/nm-internal-systemd.lease",
        )
        d = discovery(tree)
        assert await find(d, "http://10.1.1.1") == Candidate(
            "http://10.1.1.1", "NetworkManager", "eth0"
        )

    async def test_default_gateway_last_resort(self, tree: Tree) -> None:
        tree.copy("proc/net/route", "proc/route")
        d = discovery(tree)
        assert await find(d, "http://10.1.1.1") == Candidate(
            "http://10.1.1.1", "default route", "eth0"
        )


# --- precedence ---------------------------------------------------------------------------


class TestPrecedence:
    @pytest.fixture
    def everything(self, tree: Tree) -> Tree:
        """Every method has a different answer."""
        tree.networkd(2, address="10.1.1.23", netmask="255.255.255.0", server_address="10.9.0.3")
        tree.copy("var/lib/dhcp/dhclient.eth0.leases", "leases/dhclient.eth0.leases")
        tree.copy("proc/net/route", "proc/route")
        return tree

    async def test_chain_order_is_endpoint_dns_networkd_dhclient_nm_gateway(
        self, everything: Tree
    ) -> None:
        runner = FakeRunner(
            {"show": "GENERAL.DEVICE:eth0\nDHCP4.OPTION[1]:dhcp_server_identifier = 10.9.0.5\n"}
        )
        d = discovery(
            everything, endpoint="http://192.0.2.10", runner=runner, resolve=resolver("10.9.0.2")
        )
        asked, check = alive()
        with pytest.raises(FetchError):
            await d.find(check)
        assert asked == [
            "http://192.0.2.10",
            "http://10.9.0.2",
            "http://10.9.0.3",
            "http://10.1.1.2",  # dhclient: eth0 first (it carries the default route) ...
            "http://10.2.2.1",  # ... then eth1
            "http://10.9.0.5",
            "http://10.1.1.1",
        ]

    async def test_first_that_answers_wins_and_later_methods_do_not_run(
        self, everything: Tree
    ) -> None:
        runner = FakeRunner({"show": ""})
        d = discovery(everything, runner=runner, resolve=resolver("10.9.0.2"))
        found = await find(d, "http://10.9.0.3", "http://10.1.1.1")
        assert found == Candidate("http://10.9.0.3", "networkd leases", "eth0")
        assert runner.calls == []  # nmcli was never needed

    async def test_an_address_already_tried_is_not_asked_again(self, tree: Tree) -> None:
        tree.copy("run/systemd/netif/leases/2", "leases/networkd-2")
        tree.copy("proc/net/route", "proc/route")
        d = discovery(tree, resolve=resolver("10.1.1.1"))
        asked, check = alive()
        with pytest.raises(FetchError) as info:
            await d.find(check)
        assert asked.count("http://10.1.1.1") == 1
        assert "networkd leases: 10.1.1.1 tried above" in str(info.value)


# --- per NIC ------------------------------------------------------------------------------


class TestLeasesFor:
    async def test_each_nic_gets_its_own_lease_and_server(self, tree: Tree) -> None:
        tree.copy("var/lib/dhcp/dhclient.eth0.leases", "leases/dhclient.eth0.leases")
        d = discovery(tree)
        eth0, eth1 = await d.leases_for("eth0"), await d.leases_for("eth1")
        assert eth0 is not None
        assert eth1 is not None
        assert (eth0.server, eth1.server) == (IPv4Address("10.1.1.2"), IPv4Address("10.2.2.1"))
        assert str(eth1.network) == "10.2.2.0/24"

    async def test_networkd_wins_over_dhclient_for_the_same_nic(self, tree: Tree) -> None:
        tree.copy("var/lib/dhcp/dhclient.eth0.leases", "leases/dhclient.eth0.leases")
        tree.copy("run/systemd/netif/leases/2", "leases/networkd-2")
        lease = await discovery(tree).leases_for("eth0")
        assert lease is not None
        assert lease.source == "networkd"

    async def test_nmcli_per_device_then_networkmanagers_lease_file(self, tree: Tree) -> None:
        runner = FakeRunner({"eth0": (FIXTURES / "nmcli/eth0.txt").read_text()})
        tree.copy(
            f"var/lib/NetworkManager/internal-{NM_UUID}-eth1.lease",
            "leases/nm-internal-nettools.lease",
        )
        d = discovery(tree, runner=runner)
        eth0 = await d.leases_for("eth0")
        assert eth0 is not None
        assert eth0.server == IPv4Address("10.1.1.1")
        assert runner.calls[0] == ("nmcli", "-t", "-f", "DHCP4", "device", "show", "eth0")
        # nmcli does not know eth1; the nettools lease file knows only its address.
        eth1 = await d.leases_for("eth1")
        assert eth1 == Lease("eth1", "NetworkManager", IPv4Address("10.1.1.23"))

    @pytest.mark.parametrize(
        ("returncode", "stderr", "note"),
        [
            (8, "Error: NetworkManager is not running.", "NetworkManager not running"),
            (
                1,
                "Error: Could not create NMClient object: Could not connect: No such file.",
                "NetworkManager not running",
            ),
            (124, "timed out after 2 s", "nmcli timed out"),
            (3, "Error: something else", "nmcli exited 3"),
        ],
    )
    async def test_nmcli_failures_are_reported_and_not_retried_at_once(
        self, tree: Tree, returncode: int, stderr: str, note: str
    ) -> None:
        runner = FakeRunner(returncode=returncode, stderr=stderr)
        d = discovery(tree, runner=runner)
        with pytest.raises(FetchError, match=f"; NetworkManager: {note}; "):
            await find(d)
        assert await d.leases_for("eth0") is None
        assert len(runner.calls) == 1

    async def test_a_failing_nmcli_after_a_live_lease_is_an_error_not_a_smaller_lease(
        self, tree: Tree
    ) -> None:
        # NetworkManager restarting: its lease file has the address but no prefix or router;
        # falling back to it would re-render the NIC without its table routes.
        tree.copy(
            f"var/lib/NetworkManager/internal-{NM_UUID}-eth0.lease",
            "leases/nm-internal-nettools.lease",
        )
        runner = FakeRunner({"eth0": (FIXTURES / "nmcli/eth0.txt").read_text()})
        clock = [0.0]
        d = discovery(tree, runner=runner, clock=lambda: clock[0])
        live = await d.leases_for("eth0")
        assert live is not None
        assert live.router is not None
        runner.returncode, runner.stderr = 8, "Error: NetworkManager is not running."
        with pytest.raises(FetchError, match=r"eth0: nmcli failed \(NetworkManager not running\)"):
            await d.leases_for("eth0")
        runner.returncode = 0  # back: the live lease again
        clock[0] += 1000
        assert await d.leases_for("eth0") == live

    async def test_a_missing_nmcli_is_not_spawned_again_at_once(self, tree: Tree) -> None:
        runner = nmcli_missing()
        d = discovery(tree, runner=runner)
        assert await d.leases_for("eth0") is None
        assert await d.leases_for("eth1") is None
        assert len(runner.calls) == 1

    async def test_leases_of_interfaces_gone_from_this_machine_do_not_count(
        self, tree: Tree
    ) -> None:
        tree.copy("var/lib/dhcp/dhclient.eth0.leases", "leases/dhclient.eth0.leases")
        tree.unlink("eth1")
        d = discovery(tree)
        assert await d.leases_for("eth1") is None
        asked, check = alive()
        with pytest.raises(FetchError):
            await d.find(check)
        assert "http://10.2.2.1" not in asked

    async def test_the_newest_lease_file_wins(self, tree: Tree) -> None:
        old = (
            'lease {\n  interface "eth1";\n  fixed-address 10.2.2.99;\n'
            "  option dhcp-server-identifier 10.2.2.99;\n}\n"
        )
        tree.write("var/lib/dhcp/dhclient.eth1.leases", old, age=3600)
        tree.copy("var/lib/dhcp/dhclient.leases", "leases/dhclient.eth0.leases")
        lease = await discovery(tree).leases_for("eth1")
        assert lease is not None
        assert lease.address == IPv4Address("10.2.2.17")

    async def test_no_lease_anywhere(self, tree: Tree) -> None:
        assert await discovery(tree).leases_for("eth0") is None


# --- nothing answers ----------------------------------------------------------------------


class TestNothingFound:
    async def test_the_error_is_one_line_listing_every_method(self, tree: Tree) -> None:
        tree.routes(("eth0", "10.1.1.1", 100))
        d = discovery(tree)
        with pytest.raises(FetchError) as info:
            await find(d)
        assert str(info.value) == (
            "no virtual router found: endpoint: not set; data-server: NXDOMAIN; "
            "networkd leases: none; dhclient leases: none; NetworkManager: nmcli not found; "
            "default route: 10.1.1.1 did not answer (cannot connect)"
        )

    async def test_what_each_method_found_is_reported(self, tree: Tree) -> None:
        tree.copy("run/systemd/netif/leases/2", "leases/networkd-2")
        tree.copy("var/lib/dhcp/dhclient.eth0.leases", "leases/dhclient.eth0.leases")
        runner = FakeRunner(returncode=8, stderr="Error: NetworkManager is not running.")
        d = discovery(
            tree,
            endpoint="http://192.0.2.10",
            runner=runner,
            resolve=resolver(error=socket.gaierror(socket.EAI_AGAIN, "Temporary failure")),
        )
        with pytest.raises(FetchError) as info:
            await find(d)
        message = str(info.value)
        assert "\n" not in message
        assert message == (
            "no virtual router found: endpoint: http://192.0.2.10 did not answer (cannot connect); "
            "data-server: temporary DNS failure; "
            "networkd leases: 10.1.1.1 did not answer (cannot connect); "
            "dhclient leases: 10.1.1.2 did not answer (cannot connect), "
            "10.2.2.1 did not answer (cannot connect); "
            "NetworkManager: NetworkManager not running; default route: none"
        )

    async def test_a_hanging_resolver_is_cut_short_and_never_stacked(self, tree: Tree) -> None:
        calls: list[str] = []

        async def first_call_hangs(name: str) -> list[str]:
            calls.append(name)
            if len(calls) == 1:
                await asyncio.sleep(0.6)
            return ["10.1.1.1"]

        d = discovery(tree, resolve=first_call_hangs)
        with pytest.raises(FetchError, match=r"data-server: timeout after 0\.3s;"):
            await find(d)
        # The worker thread of a real lookup cannot be stopped: no second one meanwhile.
        with pytest.raises(FetchError, match="data-server: previous lookup still pending;"):
            await find(d)
        assert len(calls) == 1
        await asyncio.sleep(0.5)
        assert await find(d, "http://10.1.1.1") == Candidate(
            "http://10.1.1.1", "data-server", "data-server"
        )

    async def test_an_empty_root_is_no_error_of_its_own(self, tmp_path: Path) -> None:
        with pytest.raises(FetchError, match="networkd leases: none; dhclient leases: none"):
            await find(discovery(Tree(tmp_path)))
