"""Alibaba Cloud on the real systemd-networkd (via netplan) and the real NetworkManager.

The simulator runs in hardened mode (a request without a token is refused with 403) and the
daemon's tokens live 5 s (``[aliyun] token_ttl``). A secondary ENI is hot-plugged while its
IPv6 address is still missing from the metadata (listed 3 s later): its IPv4 state lands
first, then the IPv6 address, its rule and the IPv6 routes of its table (10000 + the MAC's
low bits, ``aliyun_parse.numbering``). The remote peer's pings to every address are
answered through the ENI's own router port; a secondary private IPv4 added upstream lands
after SIGHUP; every metadata request carried a valid token, renewed as it aged. Negative
control: without the rule of one address, its replies leave by the primary NIC.
"""

from __future__ import annotations

import time

import pytest

from nicreconciled.lab import Eni, Lab, missing_state
from nicreconciled.lab.kernel import gateways
from nicreconciled.sim.aliyun import AliyunSim
from nicreconciled.sources.aliyun_parse import numbering
from tests.integration.lab.conftest import PRIMARY_IPV4, PRIMARY_MAC, record_timing

pytestmark = pytest.mark.integration

TOKEN_TTL = 5
IPV6_DELAY = 3.0


def test_hotplug_late_ipv6_hardened_tokens_and_a_secondary_after_sighup(lab: Lab) -> None:
    tag = f"[{lab.manager}] aliyun"
    primary_nic = lab.plug_primary(PRIMARY_MAC, PRIMARY_IPV4)
    sim = lab.start_sim(cloud="aliyun")
    primary = Eni(0, PRIMARY_MAC, [PRIMARY_IPV4], "10.0.0.0/24", [], None)
    sim.add_nic(AliyunSim.lab_spec({**primary.plan_dict(), "primary": True}))
    daemon = lab.start_daemon(
        cloud="aliyun", polling={"ipv6_grace": 1}, settings={"token_ttl": TOKEN_TTL}
    )

    eni = Eni.plan(1, secondaries=1)
    eni.route_table = numbering(eni.mac, [PRIMARY_MAC, eni.mac])[0]
    spec = AliyunSim.lab_spec(eni.plan_dict())
    spec |= {"ipv6s": [], "schedule": {"ipv6s": [[IPV6_DELAY, eni.ipv6s]]}}
    eni.nic = lab.prepare(lab.new_nic(eni.mac, eni.ipv4s[0], 24, eni.subnet6))
    sim.add_nic(spec)
    lab.attach(eni.nic)
    t0 = lab.plugged_at[eni.mac]

    last: list[str] = []

    def complete(ipv4s: list[str] | None = None, ipv6: bool = True) -> bool:
        last[:] = missing_state(lab, eni, ipv4s=ipv4s, ipv6=ipv6)
        return not last

    lab.wait_for(lambda: complete(ipv6=False), 30, "IPv4 state", describe=lambda: f"{last}")
    ipv4_at = time.monotonic() - t0
    if time.monotonic() - t0 < IPV6_DELAY - 0.2:
        present = {a.local for a in lab.addresses(eni.ifname, 6)}
        assert eni.ipv6s[0] not in present, "IPv6 in the kernel before the metadata had it?"
    lab.wait_for(complete, 30, "IPv4 and IPv6 state", describe=lambda: f"{last}")
    record_timing(
        f"{tag} hot-plug -> IPv4 complete +{ipv4_at:.2f} s, IPv6 (listed at"
        f" +{IPV6_DELAY:g} s) complete +{time.monotonic() - t0:.2f} s"
    )
    assert eni.table == 10000 + 0x000101 % 20000 == 10257
    assert lab.rule_sources(4, eni.table) == set(eni.ipv4s)
    assert lab.rule_sources(6, eni.table) == set(eni.ipv6s)
    assert lab.route_destinations(4, eni.table) == {"10.0.11.0/24": None, "default": "10.0.11.1"}

    def defaults6() -> set[str | None]:
        found = [r for r in lab.routes(6, eni.table) if r.get("dst") == "default"]
        return set().union(*(gateways(r) for r in found))

    # ipv6-gateway: a static default route in T (not in missing_state's plan; NetworkManager
    # may commit it a moment after the rest; NetworkManager 1.52 merges it with the router
    # advertisement's into one multipath route).
    lab.wait_for(
        lambda: eni.gateway6 in defaults6(),
        10,
        f"default via {eni.gateway6} in table {eni.table}",
        describe=lambda: f"{defaults6()}",
    )
    assert lab.route_destinations(4, "main").get("default") == primary_nic.gateway4
    assert not lab.path(lab.output_file(PRIMARY_MAC)).exists()  # the primary is left alone

    assert eni.nic is not None
    port = eni.nic.port
    for address in [*eni.ipv4s, eni.ipv6s[0]]:
        result = lab.ping_from_peer(address)
        assert result.received == result.sent, f"{result}\n{lab.describe()}"
        assert result.replies_by_port.get(port) == result.sent, str(result)

    # Upstream: a secondary private IPv4 assigned to the ENI; SIGHUP.
    added = "10.0.11.30"
    sim.update_nic(eni.mac, {"private_ipv4s": [*eni.ipv4s, added]})
    daemon.hup()
    hup = time.monotonic()
    ipv4s = [*eni.ipv4s, added]
    what = f"{added} in the kernel"
    lab.wait_for(lambda: complete(ipv4s), 20, what, describe=lambda: f"{last}")
    took = time.monotonic() - hup
    record_timing(f"{tag} secondary IPv4 added upstream: in the kernel {took:.2f} s after SIGHUP")
    result = lab.ping_from_peer(added)
    assert result.replies_by_port.get(port) == result.sent, str(result)

    # Tokens: one on every request, renewed as it aged (hardened mode refuses none).
    stats = sim.stats()
    puts = [e for e in stats["token_log"] if e["method"] == "PUT"]
    gets = [e for e in stats["token_log"] if e["method"] == "GET"]
    assert gets, stats["tokens"]
    assert {e["token"] for e in gets} == {"valid"}, stats["tokens"]
    assert {(e["token"], e["ttl"]) for e in puts} == {("issued", str(TOKEN_TTL))}
    assert len(puts) >= 2, f"never renewed: {stats['tokens']}"
    assert len({e["number"] for e in gets}) >= 2
    assert not {401, 403} & {int(s) for s in stats["by_status"]}, stats["by_status"]
    span = gets[-1]["t"] - gets[0]["t"]
    record_timing(
        f"{tag} tokens: {len(gets)} GETs over {span:.1f} s, every one with a valid token;"
        f" {len(puts)} tokens (TTL {TOKEN_TTL} s)"
    )

    # What it applied, it found in the kernel: no drift (a static IPv6 default route that
    # NetworkManager 1.52 merged with the RA's into one multipath route read as missing).
    assert not daemon.events("kernel_drift"), daemon.events("kernel_drift")

    # Negative control: the check can fail. The daemon stops (the managers keep the state),
    # the primary's gateway is resolved from the primary's own address first, then one rule
    # goes: that address's replies leave by the primary NIC and the router drops them.
    assert lab.stop_daemon() == 0
    lab.run(["ping", "-c", "5", "-i", "0.3", "-W", "2", "-I", primary_nic.ipv4,
             primary_nic.gateway4])  # fmt: skip
    victim = eni.ipv4s[1]
    lab.run(["ip", "rule", "del", "from", victim, "table", str(eni.table)])
    result = lab.ping_from_peer(victim)
    record_timing(f"{tag} negative control, rule from {victim} deleted: {result}")
    assert result.received == 0, f"answered without the rule: {result}"
    assert result.ports == {primary_nic.port}, str(result)
