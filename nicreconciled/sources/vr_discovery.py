"""Finding CloudStack's virtual router (VR), the metadata server of each guest network.

CloudStack has no fixed metadata address: each guest network has its own VR, known to the VM
only indirectly. ``VrDiscovery.find`` walks cloud-init's chain (FACTS.md), each step only
when the ones before found nothing that answers:

1. the configured endpoint;
2. the DNS name ``data-server`` (served by the VR's dnsmasq; VPC VRs may lack it);
3. systemd-networkd leases, key ``SERVER_ADDRESS`` (the DHCP server is the VR);
4. dhclient leases, option ``dhcp-server-identifier``, the last lease of an interface wins;
5. NetworkManager's internal client: nmcli's DHCP4 options, then its lease files;
6. the default gateway, often not the VR (cloud-init #3839), hence last.

``leases_for`` gives one NIC's own lease: the server that leased a NIC its address is the
VR of that NIC's network. Only leases of interfaces present now count, as lease files under
/var/lib outlive their NICs. Paths are under an injectable root, the resolver and the
subprocess runner are injected. Nothing blocks for long or exits: a failure is one
FetchError line naming every method and what it found, and the caller retries.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Address
from pathlib import Path

from nicreconciled.errors import FetchError
from nicreconciled.sources.leases import (  # the lease names are re-exported from here too
    Lease,
    LocalLeases,
    Route,
    parse_default_routes,
    parse_dhclient_leases,
    parse_ipv4,
    parse_networkd_lease,
    parse_nmcli_dhcp4,
)
from nicreconciled.system import proc

__all__ = [
    "Candidate",
    "Check",
    "Lease",
    "Resolver",
    "Route",
    "VrDiscovery",
    "parse_default_routes",
    "parse_dhclient_leases",
    "parse_networkd_lease",
    "parse_nmcli_dhcp4",
    "vr_url",
]

#: Resolves a name to IPv4 address strings; raises OSError (socket.gaierror) on failure.
Resolver = Callable[[str], Awaitable[Sequence[str]]]
#: Liveness check of a VR base URL: None when it answered, else what went wrong.
Check = Callable[[str], Awaitable[str | None]]

DATA_SERVER = "data-server"
DNS_TIMEOUT = 1.0
_DNS_ERRORS = {socket.EAI_NONAME: "NXDOMAIN", socket.EAI_AGAIN: "temporary DNS failure"}


@dataclass(frozen=True)
class Candidate:
    """A VR that answered: its base URL, the method that found it and what pointed at it."""

    url: str
    method: str
    detail: str


def vr_url(address: IPv4Address | str) -> str:
    return f"http://{address}"


# --- discovery ----------------------------------------------------------------------------


async def system_resolver(name: str) -> list[str]:
    """IPv4 addresses of NAME via the loop's getaddrinfo (a worker thread, never the loop)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


_Found = tuple[list[tuple[str, str]], str]


class VrDiscovery(LocalLeases):
    """The discovery chain, and per-NIC leases (LocalLeases), all read under ROOT."""

    def __init__(
        self,
        endpoint: str = "",
        *,
        root: Path = Path("/"),
        runner: proc.Runner = proc.run,
        resolver: Resolver | None = None,
        dns_timeout: float = DNS_TIMEOUT,
        now: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(root=root, runner=runner, now=now, clock=clock)
        self.endpoint = endpoint
        self._resolver = resolver if resolver is not None else system_resolver
        self._dns_timeout = dns_timeout
        self._dns_pending: asyncio.Future[Sequence[str]] | None = None

    def _names(self) -> list[str]:
        """Present interfaces, those carrying a default route first (the default network's
        VR is the likeliest default VR), then by ifindex."""
        links = sorted(self.links(), key=lambda link: link.ifindex)
        routed = [r.ifname for r in self.default_routes()]
        names = [link.name for link in links]
        return sorted(names, key=lambda n: routed.index(n) if n in routed else len(routed))

    # -- the chain -------------------------------------------------------------------------
    async def _configured(self) -> _Found:
        return ([(self.endpoint, "configured")], "") if self.endpoint else ([], "not set")

    async def _dns(self) -> _Found:
        # getaddrinfo runs in a worker thread that a timeout cannot stop (a dead nameserver
        # holds it for tens of seconds): never start a second one while the last still runs.
        if self._dns_pending is not None and not self._dns_pending.done():
            return [], "previous lookup still pending"
        pending = asyncio.ensure_future(self._resolver(DATA_SERVER))
        pending.add_done_callback(lambda task: task.cancelled() or task.exception())
        self._dns_pending = pending
        try:
            async with asyncio.timeout(self._dns_timeout):
                answers = await asyncio.shield(pending)
        except TimeoutError:
            return [], f"timeout after {self._dns_timeout:g}s"
        except OSError as exc:
            errno = exc.errno if isinstance(exc, socket.gaierror) else None
            return [], _DNS_ERRORS.get(errno or 0, exc.strerror or str(exc))
        found = [(vr_url(a), DATA_SERVER) for a in dict.fromkeys(map(parse_ipv4, answers)) if a]
        return found, "no IPv4 address"

    async def _servers(self, method: str) -> _Found:
        names = self._names()  # the default route's interface first
        note = "none"
        if method == "networkd leases":
            leases = self._networkd(names)
        elif method == "dhclient leases":
            leases = self._dhclient(names)
        else:
            leases, note = await self._nm(names)
        found = [(n, le.server) for n in names if (le := leases.get(n)) and le.server]
        return [(vr_url(server), n) for n, server in found], note

    async def _gateway(self) -> _Found:
        routes = self.default_routes()
        return [(vr_url(r.gateway), r.ifname) for r in routes if r.gateway is not None], "none"

    def _chain(self) -> list[tuple[str, Callable[[], Awaitable[_Found]]]]:
        return [
            ("endpoint", self._configured),
            (DATA_SERVER, self._dns),
            ("networkd leases", partial(self._servers, "networkd leases")),
            ("dhclient leases", partial(self._servers, "dhclient leases")),
            ("NetworkManager", partial(self._servers, "NetworkManager")),
            ("default route", self._gateway),
        ]

    async def find(self, check: Check) -> Candidate:
        """The first candidate, in chain order, that CHECK accepts; FetchError otherwise."""
        report: list[str] = []
        checked: set[str] = set()
        for method, gather in self._chain():
            found, note = await gather()
            results: list[str] = []
            for url, detail in found:
                shown = url.removeprefix("http://") if method != "endpoint" else url
                if url in checked:
                    results.append(f"{shown} tried above")
                    continue
                checked.add(url)
                reason = await check(url)
                if reason is None:
                    return Candidate(url, method, detail)
                results.append(f"{shown} {reason}")
            report.append(f"{method}: {', '.join(results) or note}")
        raise FetchError("no virtual router found: " + "; ".join(report))
