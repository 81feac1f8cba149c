"""kernelstate.read finds a NIC's local routes in the real kernel's table local, and only its
own: table local also holds the kernel's routes for every address of every link (local and
broadcast) and other links' local routes, and a range may be local on another link too.

Run in a throw-away network namespace by a helper interpreter (``ip netns exec``), as in
test_rtnl_kernel.py: a netlink socket belongs to the namespace of the thread that opened it.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.conftest import PYTHON, Netns

pytestmark = pytest.mark.integration

SETUP = """\
link add nrv0 type veth peer name nrv1
link set nrv0 up
link set nrv1 up
addr add 10.0.11.20/24 dev nrv0
addr add 10.0.12.20/24 dev nrv1
route add local 198.51.100.0/24 dev nrv0 table local proto 110
route add local 203.0.113.9/32 dev nrv1 table local proto 66
route add local 192.0.2.0/28 dev nrv1 table local
"""
SETUP6 = """\
route add local 2001:db8:ff::9/128 dev nrv0 table local proto 110
"""

HELPER = r"""
import json, socket, sys
from nicreconciled.promise import Promise
from nicreconciled.system import kernelstate
local = tuple(json.loads(sys.argv[1]))
index = socket.if_nametoindex("nrv0")
promise = Promise(addresses=("10.0.11.20/24",), local=local)
kernel = kernelstate.read(index, promise)
plain = kernelstate.read(index, Promise(addresses=("10.0.11.20/24",)))
print(json.dumps({"local": sorted(kernel.local), "missing": promise.missing(kernel),
                  "routes": sorted(r.destination for r in kernel.routes),
                  "plain_local": sorted(plain.local)}))
"""


def read(ns: Netns, local: list[str]) -> dict[str, Any]:
    done = ns.run([PYTHON, "-c", HELPER, json.dumps(local)], timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_a_links_local_routes_are_its_own_of_type_local(netns: Netns) -> None:
    for family, script in (("-4", SETUP), ("-6", SETUP6)):
        subprocess.run(
            ["ip", family, "-n", netns.name, "-batch", "-"],
            input=script,
            text=True,
            check=True,
            capture_output=True,
        )
    wanted = ["198.51.100.0/24", "203.0.113.9/32", "2001:db8:ff::9/128", "192.0.2.0/28"]
    out = read(netns, wanted)
    # nrv0's own: ours, and the kernel's for its address (broadcast routes are not local).
    assert "10.0.11.20/32" in out["local"]
    assert {"198.51.100.0/24", "2001:db8:ff::9/128"} <= set(out["local"])
    assert not {"10.0.12.20/32", "203.0.113.9/32", "192.0.2.0/28"} & set(out["local"])
    assert not any(d.endswith(".255/32") for d in out["local"])
    assert out["missing"] == [
        "route local 203.0.113.9/32 table local",
        "route local 192.0.2.0/28 table local",
    ]
    assert out["routes"] == []  # table local's routes are not a table's unicast routes
    assert out["plain_local"] == []  # no local route promised: table local is not read

    netns.ip("route", "del", "local", "198.51.100.0/24", "dev", "nrv0", "table", "local")
    assert read(netns, wanted[:1])["missing"] == ["route local 198.51.100.0/24 table local"]
