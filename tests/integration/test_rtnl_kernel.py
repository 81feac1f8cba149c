"""rtnl against the real kernel, inside a throw-away network namespace.

The rtnl calls run in a helper interpreter started with ``ip netns exec``: a netlink socket
belongs to the namespace of the thread that opened it, and moving the pytest process (or one
of its threads) into a namespace would leak into every other test. The helper prints JSON.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON, Netns

pytestmark = pytest.mark.integration

# addrgenmode none: no link-local addresses, so no DAD and no address the test did not make.
SETUP4 = """\
link add nrv0 type veth peer name nrv1
link set nrv0 addrgenmode none
link set nrv1 addrgenmode none
link set nrv0 up
link set nrv1 up
addr add 10.0.11.20/24 dev nrv0
rule add from 10.0.11.20 lookup 10001 pref 10001
rule add fwmark 0x80 lookup 200 pref 100
route add 10.0.11.0/24 dev nrv0 table 10001
route add default via 10.0.11.1 dev nrv0 table 10001
route add 192.0.2.0/24 dev nrv0 table 200
"""
# `ip -batch` takes no -6 per line, and `ip rule` does not guess the family from the address.
SETUP6 = """\
addr add 2001:db8:11::10/64 dev nrv0 nodad
rule add from 2001:db8:11::10 lookup 10001 pref 10001
route add 2001:db8:11::/64 dev nrv0 table 10001
"""

HELPER = r"""
import json, select, socket, subprocess, sys, time
from dataclasses import fields
from nicreconciled.system import rtnl

def plain(obj):
    return {f.name: getattr(obj, f.name) for f in fields(obj) if f.name not in ("raw", "body")}

def run(*argv):
    subprocess.run(argv, check=True, capture_output=True)

def read_until(monitor, done, timeout=3.0):
    events, deadline = [], time.monotonic() + timeout
    while not done(events) and time.monotonic() < deadline:
        select.select([monitor], [], [], deadline - time.monotonic())
        events += monitor.read()
    return events

def rcvbuf(monitor):
    sock = socket.socket(fileno=monitor.fileno())
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    finally:
        sock.detach()

mode, arg = sys.argv[1], json.loads(sys.argv[2])
out = {"index": {n: socket.if_nametoindex(n) for n in ("lo", "nrv0", "nrv1")}}
if mode == "dump":
    out["addresses"] = [plain(a) for a in rtnl.dump_addresses()]
    out["addresses_nrv0"] = [a.cidr for a in rtnl.dump_addresses(out["index"]["nrv0"])]
    out["addresses_gone"] = rtnl.dump_addresses(9999)
    out["rules"] = [plain(r) | {"text": r.describe(), "plain": r.plain_source_rule}
                    for r in rtnl.dump_rules()]
    out["routes"] = [plain(r) | {"text": r.destination} for r in rtnl.dump_routes()]
    for table in (10001, 200, 12345):
        out[f"routes_{table}"] = [plain(r) | {"text": r.destination}
                                  for r in rtnl.dump_routes(table)]
elif mode == "watch":
    wanted = {tuple(w) for w in arg["expect"]}
    with rtnl.Monitor() as monitor:
        out["rcvbuf"] = rcvbuf(monitor)
        for argv in arg["commands"]:
            run(*argv)
        seen = lambda events: wanted <= {(e.kind, e.deleted, e.family, e.table) for e in events}
        out["events"] = [plain(e) for e in read_until(monitor, seen)]
elif mode == "overflow":
    with rtnl.Monitor(rcvbuf=1024) as monitor:
        out["rcvbuf"] = rcvbuf(monitor)
        def flood(batch):
            run("ip", "-batch", batch)
            try:
                return len(monitor.read())
            except rtnl.EventsLost:
                return "lost"
        out["first"] = flood(arg["batches"][0])
        run("ip", "route", "add", "10.2.0.1/32", "dev", "nrv0", "table", "300")
        out["after"] = [plain(e) for e in read_until(monitor, bool)]
        out["second"] = flood(arg["batches"][1])
print(json.dumps(out))
"""


def populate(ns: Netns) -> None:
    for family, script in (("-4", SETUP4), ("-6", SETUP6)):
        subprocess.run(
            ["ip", family, "-n", ns.name, "-batch", "-"],
            input=script,
            text=True,
            check=True,
            capture_output=True,
        )


def helper(ns: Netns, mode: str, arg: Any = None) -> dict[str, Any]:
    done = ns.run([PYTHON, "-c", HELPER, mode, json.dumps(arg)], timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def ip_rules(ns: Netns, family: str) -> list[str]:
    done = ns.run(["ip", family, "rule", "show"], check=True)
    return [" ".join(line.split()) for line in done.stdout.splitlines()]


def test_dumps_return_exactly_what_the_namespace_has(netns: Netns) -> None:
    populate(netns)
    out = helper(netns, "dump")
    lo, nrv0 = out["index"]["lo"], out["index"]["nrv0"]

    addresses = {
        (a["ifindex"], a["family"], a["address"], a["prefixlen"]) for a in out["addresses"]
    }
    assert addresses == {
        (lo, 2, "127.0.0.1", 8),
        (lo, 10, "::1", 128),
        (nrv0, 2, "10.0.11.20", 24),
        (nrv0, 10, "2001:db8:11::10", 64),
    }
    assert len(out["addresses"]) == 4
    assert sorted(out["addresses_nrv0"]) == ["10.0.11.20/24", "2001:db8:11::10/64"]
    assert out["addresses_gone"] == []

    # describe() prints each rule as `ip rule` does, in the kernel's order.
    v4 = [r["text"] for r in out["rules"] if r["family"] == 2]
    v6 = [r["text"] for r in out["rules"] if r["family"] == 10]
    assert v4 == ip_rules(netns, "-4")
    assert v6 == ip_rules(netns, "-6")
    assert v4 == [
        "0: from all lookup local",
        "100: from all fwmark 0x80 lookup 200",
        "10001: from 10.0.11.20 lookup 10001",
        "32766: from all lookup main",
        "32767: from all lookup default",
    ]
    assert v6 == [
        "0: from all lookup local",
        "10001: from 2001:db8:11::10 lookup 10001",
        "32766: from all lookup main",
    ]
    plain = {(r["family"], r["src"], r["table"], r["priority"]) for r in out["rules"] if r["plain"]}
    assert plain == {(2, "10.0.11.20", 10001, 10001), (10, "2001:db8:11::10", 10001, 10001)}
    (fwmark,) = (r for r in out["rules"] if r["fwmark"] is not None)
    assert (fwmark["fwmark"], fwmark["table"], fwmark["action"]) == (0x80, 200, 1)

    def routes(key: str) -> set[tuple[Any, ...]]:
        return {(r["family"], r["table"], r["text"], r["gateway"], r["oif"]) for r in out[key]}

    table_10001 = {
        (2, 10001, "10.0.11.0/24", None, nrv0),
        (2, 10001, "default", "10.0.11.1", nrv0),
        (10, 10001, "2001:db8:11::/64", None, nrv0),
    }
    assert routes("routes_10001") == table_10001
    assert len(out["routes_10001"]) == 3
    assert routes("routes_200") == {(2, 200, "192.0.2.0/24", None, nrv0)}
    assert out["routes_12345"] == []  # the kernel answers ENOENT for a table it does not have
    everything = routes("routes")
    assert table_10001 | routes("routes_200") <= everything
    assert {(2, 254, "10.0.11.0/24", None, nrv0), (10, 254, "2001:db8:11::/64", None, nrv0)} <= (
        everything
    )
    assert {r["table"] for r in out["routes"]} == {200, 10001, 254, 255}
    ipv6_subnet = next(r for r in out["routes_10001"] if r["family"] == 10)
    assert (ipv6_subnet["metric"], ipv6_subnet["type"], ipv6_subnet["protocol"]) == (1024, 1, 3)


def test_a_monitor_sees_rules_routes_addresses_and_links_change(netns: Netns) -> None:
    populate(netns)
    commands = [
        ["ip", "rule", "del", "from", "10.0.11.20", "lookup", "10001", "pref", "10001"],
        ["ip", "-6", "rule", "del", "from", "2001:db8:11::10", "lookup", "10001", "pref", "10001"],
        ["ip", "route", "flush", "table", "10001"],
        ["ip", "-6", "route", "flush", "table", "10001"],
        ["ip", "addr", "del", "10.0.11.20/24", "dev", "nrv0"],
        ["ip", "-6", "addr", "del", "2001:db8:11::10/64", "dev", "nrv0"],
        ["ip", "link", "set", "nrv1", "down"],
    ]
    expect = [
        ("rule", True, 2, 10001),
        ("rule", True, 10, 10001),
        ("route", True, 2, 10001),
        ("route", True, 10, 10001),
        ("address", True, 2, None),
        ("address", True, 10, None),
        ("link", False, 0, None),
    ]
    out = helper(netns, "watch", {"commands": commands, "expect": expect})
    nrv0, nrv1 = out["index"]["nrv0"], out["index"]["nrv1"]
    assert out["rcvbuf"] == 2 * 4 * 1024 * 1024  # SO_RCVBUFFORCE, as root, past rmem_max
    events = out["events"]
    seen = {(e["kind"], e["deleted"], e["family"], e["ifindex"], e["table"]) for e in events}
    assert seen >= {
        ("rule", True, 2, None, 10001),
        ("rule", True, 10, None, 10001),
        ("route", True, 2, nrv0, 10001),
        ("route", True, 10, nrv0, 10001),
        ("address", True, 2, nrv0, None),
        ("address", True, 10, nrv0, None),
        ("link", False, 0, nrv1, None),
    }
    # Both IPv4 routes of table 10001 went, each with its own notification.
    assert (
        sum(e["kind"] == "route" and e["table"] == 10001 and e["family"] == 2 for e in events) == 2
    )
    # What ip did carries its port id; what the kernel did in consequence (the prefix and
    # local routes of a deleted address) carries 0.
    (rule_event,) = (e for e in events if e["kind"] == "rule" and e["family"] == 2)
    assert rule_event["sender"] != 0
    fallout = [e for e in events if e["kind"] == "route" and e["table"] in (254, 255)]
    assert fallout
    assert all(e["sender"] == 0 and e["deleted"] for e in fallout)


def test_an_overflowing_monitor_raises_events_lost_and_then_goes_on(
    netns: Netns, tmp_path: Path
) -> None:
    populate(netns)
    batches = []
    for net in (1, 3):
        batch = tmp_path / f"routes-{net}.batch"
        batch.write_text(
            "".join(
                f"route add 10.{net}.{i // 250}.{i % 250}/32 dev nrv0 table 300\n"
                for i in range(300)
            )
        )
        batches.append(str(batch))
    out = helper(netns, "overflow", {"batches": batches})
    assert out["first"] == "lost", out
    assert out["rcvbuf"] < 8192  # the kernel's floor, far below 300 notifications
    # The queue was drained when the loss was reported: only the later change is left.
    nrv0 = out["index"]["nrv0"]
    assert [(e["kind"], e["deleted"], e["ifindex"], e["table"]) for e in out["after"]] == [
        ("route", False, nrv0, 300)
    ]
    # A second overflow is reported too: the kernel says ENOBUFS again only once the queue
    # has been empty, which the drain made sure of.
    assert out["second"] == "lost", out
