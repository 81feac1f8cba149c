"""NicStates with local routes (``NicState.local_routes``), shared by the renderer tests and
the golden files under ``tests/golden/<renderer>/local-routes/``.

Shaped like GCE's (FACTS.md, "Google, Azure, Alibaba"): an alias IP range (/24), a forwarded
IP (/32), an IPv6 forwarded address (/128); a primary NIC (nic0 has most alias ranges) and
a secondary. Each case has its own MAC, table and ranges, so that they can all be loaded at
once, as one instance's NICs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nicreconciled.model import NicState

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
#: The folder of the local-route golden files in each renderer's golden folder.
FOLDER = "local-routes"


def state(**fields: Any) -> NicState:
    base: dict[str, Any] = {
        "mac": "42:01:0a:80:00:05",
        "cloud": "gce",
        "primary": False,
        "device_number": 1,
        "route_table": 10001,
        "route_metric": 513,
        "ipv4_addresses": ("10.128.0.5",),
        "ipv4_subnet": "10.128.0.0/20",
        "ipv4_gateway": "10.128.0.1",
        "local_routes": ("10.128.16.0/24", "203.0.113.7/32"),
    }
    base.update(fields)
    return NicState.model_validate(base)


#: Golden file stem -> state (the same states for every renderer).
CASES: dict[str, NicState] = {
    "secondary-dualstack": state(
        ipv6_addresses=("2600:1900:4010:5::5",),
        ipv6_subnets=("2600:1900:4010:5::/64",),
        local_routes=("10.128.16.0/24", "203.0.113.7/32", "2600:1900:4010:5:8000::7/128"),
    ),
    "primary-ipv4": state(
        mac="42:01:0a:80:00:02",
        primary=True,
        device_number=0,
        route_table=10000,
        route_metric=512,
        ipv4_addresses=("10.128.0.2",),
        local_routes=("10.128.32.0/24", "10.128.33.0/28", "203.0.113.8/32"),
    ),
    # An IPv6 forwarded address on a NIC without IPv6 addresses: IPv6 stays on on the link.
    "secondary-ipv4-ipv6-local": state(
        mac="42:01:0a:80:00:06",
        device_number=2,
        route_table=10002,
        route_metric=514,
        ipv4_addresses=("10.128.0.6",),
        local_routes=("10.128.48.0/24", "2001:db8:77::9/128"),
    ),
}


def golden_path(renderer: str, stem: str, suffix: str) -> Path:
    return GOLDEN / renderer / FOLDER / f"{stem}{suffix}"


def other_mac(state: NicState, last: int) -> NicState:
    """STATE as another NIC (its MAC's last byte LAST, its table and metric 10 more), for a
    second file of the same shape."""
    fields = state.model_dump()
    fields.update(mac=state.mac[:-2] + f"{last:02x}", device_number=state.device_number or 0)
    fields["route_table"] += 10
    fields["route_metric"] += 10
    return NicState.model_validate(fields)
