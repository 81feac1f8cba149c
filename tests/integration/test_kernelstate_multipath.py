"""kernelstate.read finds a promised route that the kernel holds as one next hop of a
multipath route: NetworkManager 1.52 merges a static IPv6 default route (a metadata's
gateway: Alibaba's ``ipv6-gateway``) and the router advertisement's default route of the same
table and metric into one route with RTA_MULTIPATH. Read as a single route, the static one
looked missing, and the daemon healed until its heal limit (seen on Debian 13).

Run in a throw-away network namespace by a helper interpreter, as test_kernelstate_local.py.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.conftest import PYTHON, Netns

pytestmark = pytest.mark.integration

SETUP = """\
link add nrm0 type veth peer name nrm1
link set nrm0 up
link set nrm1 up
addr add 2001:db8:11::10/64 dev nrm0 nodad
route add 2001:db8:11::/64 dev nrm0 table 10257 metric 769
route add default table 10257 metric 769 \
 nexthop via 2001:db8:11::1 dev nrm0 nexthop via fe80::52:ff:fe00:2 dev nrm0
"""

HELPER = r"""
import json, socket
from nicreconciled.promise import Promise, PromisedRoute
from nicreconciled.system import kernelstate
index = socket.if_nametoindex("nrm0")
promise = Promise(
    routes=(
        PromisedRoute("2001:db8:11::/64", None, 10257),
        PromisedRoute("::/0", "2001:db8:11::1", 10257),
    ),
    table=10257,
)
kernel = kernelstate.read(index, promise)
print(json.dumps({"missing": promise.missing(kernel),
                  "routes": sorted(r.describe() for r in kernel.routes)}))
"""


def read(ns: Netns) -> dict[str, Any]:
    done = ns.run([PYTHON, "-c", HELPER], timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_a_next_hop_of_a_multipath_route_is_the_promised_route(netns: Netns) -> None:
    subprocess.run(
        ["ip", "-6", "-n", netns.name, "-batch", "-"],
        input=SETUP,
        text=True,
        check=True,
        capture_output=True,
    )
    shown = subprocess.run(
        ["ip", "-n", netns.name, "-6", "-j", "route", "show", "table", "10257"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "nexthops" in shown, shown  # the kernel really holds one multipath route
    out = read(netns)
    assert out["missing"] == []
    assert "route default via 2001:db8:11::1 table 10257" in out["routes"]
    assert "route default via fe80::52:ff:fe00:2 table 10257" in out["routes"]
    # Without the static next hop, it is missing again.
    netns.ip("-6", "route", "del", "default", "table", "10257")
    netns.ip("-6", "route", "add", "default", "via", "fe80::52:ff:fe00:2", "dev", "nrm0",
             "table", "10257", "metric", "769")  # fmt: skip
    assert read(netns)["missing"] == ["route default via 2001:db8:11::1 table 10257"]
