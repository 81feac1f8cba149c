"""The local DHCP leases of the machine's NICs, read under an injectable root.

A cloud whose metadata leaves a NIC's IPv4 to DHCP (CloudStack, OpenStack's ``ipv4_dhcp``
networks) completes the NIC from its own lease: address, prefix and router. Sources, in the
order tried: systemd-networkd's lease files (by ifindex, deleted with the link), dhclient's
lease files, NetworkManager's live DHCP4 options (nmcli), then its lease files. Only leases
of interfaces present now count, as lease files under /var/lib outlive their NICs. The
subprocess runner and the clocks are injected.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from nicreconciled.errors import FetchError
from nicreconciled.model import normalize_mac
from nicreconciled.system import proc, sysfs

#: Probe key of a NIC's lease: ``lease:<mac>``, answered by ``Lease.describe()`` or None.
LEASE_KEY = "lease:"
NMCLI_TIMEOUT = 2.0
#: nmcli missing or NetworkManager not running: do not spawn nmcli again for this long (a
#: NIC waiting for its lease is probed every half second).
NMCLI_RETRY = 30.0
NM_DIR = "var/lib/NetworkManager"
_NM_LEASE = re.compile(r"internal-[0-9a-fA-F-]{36}-(.+)\.lease")
_RTF_UP, _RTF_GATEWAY = 0x1, 0x2


@dataclass(frozen=True)
class Lease:
    """What a DHCP client recorded for one interface; None where it recorded nothing usable."""

    ifname: str
    source: str
    address: IPv4Address | None = None
    prefixlen: int | None = None
    router: IPv4Address | None = None
    server: IPv4Address | None = None

    @property
    def network(self) -> IPv4Network | None:
        """The subnet the lease gives the address; None without one, and for a netmask of
        0.0.0.0 (/0 is every address, not a subnet: netplan refuses an address with it)."""
        if self.address is None or not self.prefixlen:
            return None
        return IPv4Interface(f"{self.address}/{self.prefixlen}").network

    def describe(self) -> str:
        """Canonical one-line text: the raw answer of a lease probe."""
        address = self.address if self.prefixlen is None else f"{self.address}/{self.prefixlen}"
        return (
            f"{self.source} {self.ifname} address={address} router={self.router}"
            f" server={self.server}"
        )


@dataclass(frozen=True)
class Route:
    ifname: str
    gateway: IPv4Address | None
    metric: int


def lease_key(mac: str) -> str:
    return f"{LEASE_KEY}{normalize_mac(mac)}"


# --- pure parsers -------------------------------------------------------------------------


def parse_ipv4(text: str | None) -> IPv4Address | None:
    try:
        address = IPv4Address((text or "").strip())
    except ValueError:
        return None
    return None if address.is_unspecified else address


def _prefix(netmask: str | None) -> int | None:
    try:
        return IPv4Network(f"0.0.0.0/{(netmask or '').strip()}").prefixlen
    except ValueError:
        return None  # absent or not a contiguous mask


def _lease(ifname: str, source: str, *fields: str | None) -> Lease:
    """A Lease from recorded text: address, netmask, routers (the first is preferred),
    server. A field that does not parse is left out, not guessed."""
    address, netmask, routers, server = fields
    router = next(iter((routers or "").replace(",", " ").split()), None)
    return Lease(
        ifname,
        source,
        parse_ipv4(address),
        _prefix(netmask),
        parse_ipv4(router),
        parse_ipv4(server),
    )


def parse_networkd_lease(text: str, ifname: str, source: str = "networkd") -> Lease:
    """systemd's KEY=VALUE lease format (networkd, and NetworkManager's internal client)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[key.strip()] = value.strip()
    keys = ("ADDRESS", "NETMASK", "ROUTER", "SERVER_ADDRESS")
    return _lease(ifname, source, *(values.get(k) for k in keys))


def _expired(expire: str | None, now: float) -> bool:
    words = (expire or "").split()
    try:
        if not words or words[0] == "never":
            return False
        if words[0] == "epoch":
            return int(words[1]) <= now
        # "expire 4 2024/01/02 03:04:05": weekday, then the date and time in UTC.
        stamp = datetime.strptime(" ".join(words[1:3]), "%Y/%m/%d %H:%M:%S")
        return stamp.replace(tzinfo=UTC).timestamp() <= now
    except (ValueError, IndexError):
        return False  # a format we do not know is no reason to drop the lease


def parse_dhclient_leases(text: str, now: float) -> dict[str, Lease]:
    """Interface -> its last unexpired ``lease { }`` block (dhclient appends renewals)."""
    out: dict[str, Lease] = {}
    block: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if block is None:
            if line.endswith("{") and line[:-1].strip() == "lease":
                block = {}
            continue
        if line == "}":
            ifname = block.get("interface", "").strip('"')
            if ifname and not _expired(block.get("expire"), now):
                keys = ("fixed-address", "subnet-mask", "routers", "dhcp-server-identifier")
                out[ifname] = _lease(ifname, "dhclient", *(block.get(k) for k in keys))
            block = None
            continue
        # One statement per line; "expire epoch N; # date" carries a comment after the ';'.
        words = line.split(";", 1)[0].split(None, 2)
        if len(words) == 3 and words[0] == "option":
            block[words[1]] = words[2]
        elif words:
            block[words[0]] = " ".join(words[1:])
    return out


def parse_nmcli_dhcp4(text: str, ifname: str | None = None) -> dict[str, Lease]:
    """``nmcli -t -f [GENERAL.DEVICE,]DHCP4 device show [IFACE]`` -> interface -> lease.

    Lines look like ``DHCP4.OPTION[3]:dhcp_server_identifier = 10.1.1.1``; without
    GENERAL.DEVICE lines every option belongs to IFNAME.
    """
    options: dict[str, dict[str, str]] = {}
    current = ifname
    for line in text.splitlines():
        field, sep, rest = line.partition(":")
        if not sep:
            continue
        if field == "GENERAL.DEVICE":
            current = rest.strip()
        elif field.startswith("DHCP4.OPTION") and current:
            key, eq, value = rest.partition("=")
            if eq:
                options.setdefault(current, {})[key.strip()] = value.strip()
    keys = ("ip_address", "subnet_mask", "routers", "dhcp_server_identifier")
    return {
        name: _lease(name, "NetworkManager", *(found.get(k) for k in keys))
        for name, found in options.items()
    }


def parse_default_routes(text: str) -> list[Route]:
    """IPv4 default routes of /proc/net/route (hex, little-endian), lowest metric first."""
    routes: list[Route] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, flags, mask = (int(fields[i], 16) for i in (1, 3, 7))
            gateway = IPv4Address(int(fields[2], 16).to_bytes(4, "little"))
            metric = int(fields[6])  # decimal, unlike the rest
        except (ValueError, OverflowError):
            continue
        if destination or mask or not flags & _RTF_UP:
            continue
        routes.append(Route(fields[0], gateway if flags & _RTF_GATEWAY else None, metric))
    return sorted(routes, key=lambda r: r.metric)


def _usable(lease: Lease | None) -> bool:
    return lease is not None and (lease.address is not None or lease.server is not None)


# --- the machine's leases -------------------------------------------------------------


class LocalLeases:
    """Per-NIC leases and default routes, all read under ROOT."""

    def __init__(
        self,
        *,
        root: Path = Path("/"),
        runner: proc.Runner = proc.run,
        now: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self._runner = runner
        self._now = now
        self._clock = clock
        self._nmcli_off_until = 0.0
        self._nmcli_off_reason = ""
        #: Interfaces whose lease NetworkManager gave live (see leases_for).
        self._nm_live: set[str] = set()

    def links(self) -> list[sysfs.Link]:
        return sysfs.list_links(self.root / "sys")

    def default_routes(self) -> list[Route]:
        try:
            return parse_default_routes((self.root / "proc/net/route").read_text())
        except (OSError, UnicodeDecodeError):
            return []

    def _networkd(self, names: Iterable[str]) -> dict[str, Lease]:
        # networkd names lease files by ifindex and deletes them with the link.
        wanted = set(names)
        out: dict[str, Lease] = {}
        for link in self.links():
            if link.name in wanted:
                path = self.root / "run/systemd/netif/leases" / str(link.ifindex)
                text = _read(path)
                if text is not None:
                    out[link.name] = parse_networkd_lease(text, link.name)
        return out

    def _dhclient(self, names: Iterable[str]) -> dict[str, Lease]:
        files = [*self.root.glob("var/lib/dhcp/dhclient*.leases")]
        files += self.root.glob(f"{NM_DIR}/dhclient-*.lease")
        out: dict[str, Lease] = {}
        for path in _oldest_first(files):  # so the newest file's leases win
            text = _read(path)
            if text is not None:
                out.update(parse_dhclient_leases(text, self._now()))
        wanted = set(names)
        return {name: lease for name, lease in out.items() if name in wanted}

    def _nm_files(self, names: Iterable[str]) -> dict[str, Lease]:
        # NetworkManager >= 1.20 (nettools client) writes only "ADDRESS=" here; older
        # versions (systemd's client) wrote networkd's format, SERVER_ADDRESS included. The
        # file outlives NetworkManager, so nmcli's live options come first.
        wanted = set(names)
        out: dict[str, Lease] = {}
        for path in _oldest_first(self.root.glob(f"{NM_DIR}/internal-*.lease")):
            match = _NM_LEASE.fullmatch(path.name)
            if match and match.group(1) in wanted and (text := _read(path)) is not None:
                out[match.group(1)] = parse_networkd_lease(text, match.group(1), "NetworkManager")
        return out

    async def _nmcli(self, ifname: str | None) -> tuple[dict[str, Lease], str]:
        """Live DHCP4 options; the note says why there are none ("" when nmcli ran)."""
        if self._clock() < self._nmcli_off_until:
            return {}, self._nmcli_off_reason
        if ifname is not None and ifname.startswith("-"):
            return {}, ""  # a legal interface name, but nmcli would read it as an option
        fields = "DHCP4" if ifname else "GENERAL.DEVICE,DHCP4"
        argv = ["nmcli", "-t", "-f", fields, "device", "show", *([ifname] if ifname else [])]
        done = await self._runner(argv, timeout=NMCLI_TIMEOUT)
        if done.ok:
            return parse_nmcli_dhcp4(done.stdout, ifname), ""
        if done.returncode == 10:  # no such device: NetworkManager does not know it
            return {}, ""
        # Exit 8 is "not running"; without D-Bus at all nmcli exits 1 "Could not create
        # NMClient object". Neither heals within seconds, nor does a missing binary.
        reason = {127: "nmcli not found", 124: "nmcli timed out"}.get(done.returncode, "")
        if done.returncode == 8 or "NMClient" in done.stderr:
            reason = "NetworkManager not running"
        self._nmcli_off_until = self._clock() + NMCLI_RETRY
        self._nmcli_off_reason = reason or f"nmcli exited {done.returncode}"
        return {}, self._nmcli_off_reason

    async def _nm(
        self, names: list[str], ifname: str | None = None
    ) -> tuple[dict[str, Lease], str]:
        """NetworkManager's leases, nmcli's first, and a note saying why there are none."""
        live, note = await self._nmcli(ifname)
        files = self._nm_files(names)
        leases = {n: le for n in names if (le := live.get(n) or files.get(n)) is not None}
        return leases, note or "none"

    async def leases_for(self, ifname: str) -> Lease | None:
        """IFNAME's own lease, from the first source (chain order) that has one.

        A source that fails is an error, never a smaller answer: once NetworkManager gave an
        interface's lease live (address, prefix, router), an nmcli failure (NetworkManager
        restarting) raises FetchError instead of falling back to its lease file, which lacks
        the subnet and the router and would re-render the NIC without its table routes.
        """
        if ifname not in {link.name for link in self.links()}:
            return None
        for read in (self._networkd, self._dhclient):
            lease = read([ifname]).get(ifname)
            if _usable(lease):
                return lease
        live, failure = await self._nmcli(ifname)
        lease = live.get(ifname)
        if _usable(lease):
            self._nm_live.add(ifname)
            return lease
        if failure and ifname in self._nm_live:
            raise FetchError(f"{ifname}: nmcli failed ({failure}); its lease file has less")
        if not failure:
            self._nm_live.discard(ifname)  # nmcli ran and has no lease: that is data
        lease = self._nm_files([ifname]).get(ifname)
        return lease if _usable(lease) else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _oldest_first(paths: Iterable[Path]) -> list[Path]:
    def key(path: Path) -> tuple[float, str]:
        try:
            return path.stat().st_mtime, path.name
        except OSError:
            return 0.0, path.name  # removed since the glob

    return sorted(paths, key=key)
