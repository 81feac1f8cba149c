"""GCE on the real systemd-networkd (netplan) and NetworkManager (keyfiles).

GCE sets an instance's NICs when it is created (no hot-plug): the secondary NIC is there when
the daemon starts, and gets its complete kernel state: its address, a rule from it and from
each range the VPC delivers to it (an alias IP range, a forwarded IP) to table 10001, the
subnet and default routes there, and a local route per range in table local. The remote
peer's pings to the address and into each range are answered through the NIC's own router
port (the lab's router routes the ranges to the NIC's address, as the VPC does). Negative
control: without the alias range's rule, its replies no longer come through the port.

Then a change upstream (a new alias range) reaches the kernel without a signal and with a
10-minute resync_interval: through the metadata server's long poll, the only way it can.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from nicreconciled.lab import Eni, Lab, missing_state
from nicreconciled.lab.eni import kernel_snapshot
from nicreconciled.promise import promise
from nicreconciled.sim.gce import GceSim
from nicreconciled.sources.gce_parse import parse_nic
from tests.integration.lab.conftest import PRIMARY_IPV4, PRIMARY_MAC, record_timing

pytestmark = pytest.mark.integration

#: Long: a change that lands within the test came by the long poll, not a periodic check.
RESYNC = 600.0
PRIMARY = Eni(0, PRIMARY_MAC, [PRIMARY_IPV4], "10.0.0.0/24", [], None)
ALIAS = "10.0.11.128/28"
FORWARDED = "198.51.100.7"


def spec(eni: Eni, **plan: Any) -> dict[str, Any]:
    return GceSim.lab_spec({**eni.plan_dict(), **plan})


class Gce:
    """The lab's metadata, mirrored in an in-process simulator: the document the daemon
    reads, parsed by the product's parser, gives the NicState whose promise is checked."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.mirror = GceSim()
        lab.plug_primary(PRIMARY_MAC, PRIMARY_IPV4)
        self.sim = lab.start_sim(cloud="gce")
        self.add(spec(PRIMARY))

    def add(self, nic: dict[str, Any]) -> None:
        self.sim.add_nic(nic)
        self.mirror.add_nic(nic)

    def update(self, mac: str, changes: dict[str, Any]) -> None:
        self.sim.update_nic(mac, changes)
        self.mirror.update_nic(mac, changes)

    def missing(self, eni: Eni) -> list[str]:
        """What of ENI's promised state (the product's promise of what GCE's document says)
        is not in the kernel, and any rule in its table the promise does not have."""
        state = parse_nic(eni.mac, self.mirror.document()).state
        assert state is not None
        promised = promise(state)
        kernel = kernel_snapshot(self.lab, eni.ifname, state.route_table)
        ours = {r.source for r in promised.rules}
        stale = sorted(r.source for r in kernel.rules if r.source not in ours)
        return promised.missing(kernel) + [f"no stale rule from {s}" for s in stale]

    def wait_complete(self, eni: Eni, what: str, timeout: float = 30) -> float:
        last: list[str] = []

        def complete() -> bool:
            last[:] = self.missing(eni)
            return not last

        self.lab.wait_for(complete, timeout, what, describe=lambda: f"missing: {last}")
        return time.monotonic()


def answered_through(lab: Lab, eni: Eni, address: str) -> None:
    assert eni.nic is not None
    result = lab.ping_from_peer(address)
    assert result.received == result.sent, f"{result}\n{lab.describe()}"
    assert result.replies_by_port.get(eni.nic.port) == result.sent, str(result)


def test_a_secondary_nic_present_at_start_answers_for_its_address_and_ranges(lab: Lab) -> None:
    tag = f"[{lab.manager}]"
    gce = Gce(lab)
    eni = Eni.plan(1, secondaries=0, ipv6=False)
    gce.add(spec(eni, ip_aliases=[ALIAS], forwarded_ips=[FORWARDED]))
    eni.nic = lab.plug(eni.mac, eni.ipv4s[0], 24)  # there before the daemon: no hot-plug
    lab.route_to_nic(ALIAS, eni.nic)
    lab.route_to_nic(FORWARDED, eni.nic)
    started = time.monotonic()
    # heal off: the negative control deletes a rule the daemon would put back at once.
    lab.start_daemon(cloud="gce", resync_interval=RESYNC, kernel={"heal": False})
    took = gce.wait_complete(eni, "the NIC's complete kernel state") - started
    record_timing(f"{tag} GCE nic1 at start (alias range, forwarded IP) -> complete: {took:.2f} s")

    assert eni.table == 10001
    sources = {f"{r.src}/{r.src_len or 32}" for r in lab.rules(4, eni.table)}
    assert sources == {f"{eni.ipv4s[0]}/32", ALIAS, f"{FORWARDED}/32"}
    assert lab.route_destinations(4, eni.table) == {"10.0.11.0/24": None, "default": "10.0.11.1"}
    local = {r["dst"] for r in lab.routes(4, "local") if r.get("dev") == eni.ifname}
    assert {ALIAS, FORWARDED} <= local, local
    assert lab.route_destinations(4, "main").get("default") == "10.0.0.1"
    assert not lab.path(lab.output_file(PRIMARY_MAC)).exists()
    # The link's MTU is the metadata's.
    (link,) = lab.ip_json("link", "show", "dev", eni.ifname)
    assert link["mtu"] == 1460, link

    for address in (eni.ipv4s[0], "10.0.11.130", "10.0.11.143", FORWARDED):
        answered_through(lab, eni, address)

    # Negative control: the check can fail. The primary's gateway is resolved first (from
    # the primary's own address), or the misrouted reply never even leaves.
    lab.run(["ping", "-c", "5", "-i", "0.3", "-W", "2", "-I", PRIMARY_IPV4, "10.0.0.1"])
    lab.run(["ip", "rule", "del", "from", ALIAS, "table", str(eni.table)])
    result = lab.ping_from_peer("10.0.11.130")
    record_timing(f"{tag} GCE negative control, rule from {ALIAS} deleted: {result}")
    assert result.replies_by_port.get(eni.nic.port, 0) == 0, f"still through the port: {result}"
    assert result.received == 0, str(result)


def test_a_change_upstream_lands_by_the_long_poll_without_a_signal(lab: Lab) -> None:
    tag = f"[{lab.manager}]"
    gce = Gce(lab)
    eni = Eni.plan(1, secondaries=0, ipv6=False)
    gce.add(spec(eni))
    eni.nic = lab.plug(eni.mac, eni.ipv4s[0], 24)
    daemon = lab.start_daemon(cloud="gce", resync_interval=RESYNC)
    gce.wait_complete(eni, "the NIC's complete kernel state")
    assert not missing_state(lab, eni, ipv6=False)
    quiet = wait_quiet(lab, gce)

    lab.route_to_nic(ALIAS, eni.nic)
    gce.update(eni.mac, {"ip_aliases": [ALIAS]})
    changed = time.monotonic()
    took = gce.wait_complete(eni, "the new alias range in the kernel", timeout=20) - changed
    record_timing(
        f"{tag} GCE alias range added upstream -> in the kernel (local route and rule; no"
        f" SIGHUP, resync_interval {RESYNC:g} s): {took:.2f} s"
    )
    assert not daemon.events("resync_requested"), "a SIGHUP was not part of this test"
    # The daemon was quiet (its one request held open), and what answered was that request,
    # with the new document: the fetches it kicked were served that document.
    after = gce.sim.stats(log=False)
    assert after["long_polls_changed"] == quiet["long_polls_changed"] + 1, after
    assert after["requests"] <= quiet["requests"] + 2, (quiet, after)
    answered_through(lab, eni, "10.0.11.130")


def wait_quiet(lab: Lab, gce: Gce, still: float = 1.5) -> dict[str, Any]:
    """Until no request to the metadata server has been answered for STILL seconds (the
    daemon at rest, its long poll held open); the simulator's statistics then."""
    seen: list[tuple[float, int]] = []

    def quiet() -> bool:
        count = gce.sim.stats(log=False)["requests"]
        if not seen or seen[-1][1] != count:
            seen.append((time.monotonic(), count))
        return (
            time.monotonic() - seen[-1][0] >= still
            and gce.sim.stats(log=False)["requests"] == count
        )

    lab.wait_for(quiet, 30, "the daemon at rest", step=0.1)
    stats: dict[str, Any] = gce.sim.stats(log=False)
    return stats
