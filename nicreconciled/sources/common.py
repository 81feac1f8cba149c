"""What every source needs to read metadata safely; written once, used by every cloud.

* Text checks: a value with a control character, a scalar of more than one line, an entry
  that is not an address or a network, a list longer than any real NIC has: each is a
  MetadataError of one line naming the key, never a guess.
* ``gather``: several requests at once, every one finished, then the first failure raised:
  a poll uses all of its answers or none.
* ``SharedAnswer``: one answer shared by every NIC for a short while, one request in flight
  at most, for metadata that describes every NIC in one document (EC2's ``macs/`` listing,
  OCI's ``vnics/``, OpenStack's ``network_data.json``): N NICs polling together cost one
  request, not N.
* ``make_state``: a NicState from typed values, a refusal turned into a MetadataError.
* ``parse_json``: a JSON document of a bounded size and the expected top-level type.
* ``device_numbers``: numbers for NICs a cloud does not number (CloudStack, OpenStack), from
  their ifindex, stable while the NIC exists; ``routed_macs``: which NICs carry a default
  route, for the clouds that find their primary NIC that way.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from nicreconciled.errors import MetadataError
from nicreconciled.model import NicState
from nicreconciled.sources.leases import Route
from nicreconciled.system import sysfs

_T = TypeVar("_T")

#: C0 and C1 control characters except the newline that separates list entries.
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_SMALL_INT = re.compile(r"[0-9]{1,2}")
#: A JSON metadata document larger than this is garbage (a real one is a few KiB).
MAX_DOCUMENT = 1024 * 1024


def check_text(key: str, value: str) -> None:
    """MetadataError if VALUE holds a control character (a newline is allowed)."""
    bad = CONTROL.search(value)
    if bad is not None:
        raise MetadataError(f"{key}: control character {bad.group()!r} in value")


def scalar(key: str, value: str) -> str:
    """VALUE stripped; MetadataError if it spans more than one line."""
    text = value.strip()
    check_text(key, text)
    if "\n" in text:
        raise MetadataError(f"{key}: more than one line")
    return text


def small_int(key: str, value: str | int, limit: int = 99) -> int:
    """An integer 0..LIMIT (at most two digits as text; a bool is not an integer)."""
    if isinstance(value, bool):
        raise MetadataError(f"{key}: not an integer 0..{limit}: {value!r}")
    if isinstance(value, int):
        number = value
    else:
        text = scalar(key, value)
        if not _SMALL_INT.fullmatch(text):
            raise MetadataError(f"{key}: not an integer 0..{limit}: {text[:40]!r}")
        number = int(text)
    if not 0 <= number <= limit:
        raise MetadataError(f"{key}: not an integer 0..{limit}: {number}")
    return number


def entries(
    key: str, values: Iterable[str], kind: Callable[[str], _T], limit: int
) -> tuple[_T, ...]:
    """Parsed, de-duplicated entries in their order; MetadataError names the first bad one.

    ipaddress accepts "fe80::1%eth0" (scoped) and "10.0.0.0" as a /32 network; metadata
    never means either, so both are refused. So are the unspecified address (0.0.0.0, ::),
    which no NIC or router has (systemd-networkd reads ``Address=0.0.0.0/24`` as "any free
    /24 of its pool"), and a /0 network, which is every address, not a subnet or a prefix
    (netplan refuses an address with /0; a rule from it would take all of the host's
    traffic).
    """
    texts = [value.strip() for value in values]
    texts = [text for text in texts if text]
    if len(texts) > limit:
        raise MetadataError(f"{key}: {len(texts)} entries, more than {limit}")
    out: list[_T] = []
    for entry in texts:
        check_text(key, entry)
        if "%" in entry or (kind in (IPv4Network, IPv6Network) and "/" not in entry):
            raise MetadataError(f"{key}: invalid entry {entry[:60]!r}")
        try:
            item = kind(entry)
        except ValueError:
            raise MetadataError(f"{key}: invalid entry {entry[:60]!r}") from None
        if isinstance(item, IPv4Address | IPv6Address) and item.is_unspecified:
            raise MetadataError(f"{key}: invalid entry {entry[:60]!r}: no address")
        if isinstance(item, IPv4Network | IPv6Network) and item.prefixlen == 0:
            raise MetadataError(f"{key}: invalid entry {entry[:60]!r}: every address")
        if item not in out:
            out.append(item)
    return tuple(out)


def lines(key: str, value: str, kind: Callable[[str], _T], limit: int) -> tuple[_T, ...]:
    """``entries`` of a one-per-line text value."""
    return entries(key, value.split("\n"), kind, limit)


def one(key: str, value: str, kind: Callable[[str], _T]) -> _T:
    """Exactly one entry (an address, a network) in a one-line value."""
    items = entries(key, [scalar(key, value)], kind, 1)
    if not items:
        raise MetadataError(f"{key}: empty value")
    return items[0]


def make_state(**fields: Any) -> NicState:
    """NicState(**FIELDS); a value the model refuses is a MetadataError naming the field."""
    try:
        return NicState(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MetadataError(f"{fields.get('mac', '?')}: {where}: {first['msg']}") from None


def parse_json(key: str, text: str, kind: type[_T]) -> _T:
    """A JSON document whose top level is KIND (dict or list); MetadataError otherwise."""
    if len(text) > MAX_DOCUMENT:
        raise MetadataError(f"{key}: {len(text)} bytes, more than {MAX_DOCUMENT}")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise MetadataError(f"{key}: not JSON ({str(exc)[:80]})") from None
    except RecursionError:
        # "[[[[...": a thousand levels fit in a few KiB; the decoder recurses once per level.
        raise MetadataError(f"{key}: not JSON (nested too deeply)") from None
    if not isinstance(data, kind):
        raise MetadataError(f"{key}: expected a JSON {kind.__name__}, got {type(data).__name__}")
    return data


async def gather(calls: Sequence[Awaitable[_T]]) -> list[_T]:
    """Await every call, then raise the first failure: partial answers are never used.

    Each call is bounded by the HTTP timeout, so waiting for all costs no more than the
    slowest; raising at the first would leave the others running unobserved.
    """
    results = await asyncio.gather(*calls, return_exceptions=True)
    out: list[_T] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        out.append(result)
    return out


class SharedAnswer(Generic[_T]):
    """One answer shared by every caller for TTL seconds; one request in flight at most.

    ``get(newer_than=t)`` wants an answer to a request sent at or after T (a NIC attached a
    moment ago is not in an older one): it waits for the request in flight, and sends a new
    one if that was sent too early. Failures are not cached: every caller of a failed
    request gets its error, the next call sends again.
    """

    def __init__(
        self,
        load: Callable[[], Awaitable[_T]],
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._ttl = ttl
        self._clock = clock
        #: (when the request was sent, its answer)
        self.cached: tuple[float, _T] | None = None
        self._task: asyncio.Future[tuple[float, _T]] | None = None

    async def get(self, *, newer_than: float | None = None) -> _T:
        while True:
            cached = self.cached
            fresh = cached is not None and self._clock() - cached[0] < self._ttl
            if cached is not None and fresh and (newer_than is None or cached[0] >= newer_than):
                return cached[1]
            task = self._task
            if task is None or task.done():
                task = self._task = asyncio.ensure_future(self._send())
                # Read even when every waiter was cancelled: never "exception never retrieved".
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
                return (await asyncio.shield(task))[1]
            sent, answer = await asyncio.shield(task)
            if newer_than is None or sent >= newer_than:
                return answer
            # Sent before the caller's poll began: look again (send a new one).

    async def _send(self) -> tuple[float, _T]:
        sent = self._clock()
        answer = await self._load()
        self.cached = (sent, answer)
        return self.cached

    def forget(self) -> None:
        self.cached = None


def by_mac(links: Iterable[sysfs.Link]) -> dict[str, sysfs.Link]:
    """One ethernet link per MAC: a VLAN or macvlan on top shares its parent's MAC, so
    prefer the non-virtual link, then the oldest (lowest ifindex)."""
    out: dict[str, sysfs.Link] = {}
    for link in sorted(links, key=lambda x: (x.virtual, x.ifindex)):
        if link.ethernet:
            out.setdefault(link.mac, link)
    return out


def device_numbers(links: Iterable[sysfs.Link], primary: str | None) -> dict[str, int]:
    """MAC -> device number in 0..99: 0 for PRIMARY, 1..99 for the other ethernet NICs.

    The number feeds the route table and metric, so it must not change while the NIC
    exists: a rank among present NICs would shift whenever a lower one detaches and force
    a re-render (new table, dropped flows) of a NIC that did not change. The number is
    therefore the ifindex folded into 1..99; on a collision (ifindexes 99 apart, i.e. after
    ~100 hot-plugs) the NIC with the higher ifindex takes the next free number.
    """
    out = {primary: 0} if primary is not None else {}
    taken = {0}
    for link in sorted(by_mac(links).values(), key=lambda x: x.ifindex):
        if link.mac in out:
            continue
        slot = (link.ifindex - 2) % 99 + 1  # ifindex 1 is lo
        for _ in range(99):
            if slot not in taken:
                taken.add(slot)
                out[link.mac] = slot
                break
            slot = slot % 99 + 1
    return out


def routed_macs(
    links: Iterable[sysfs.Link], routes: Iterable[Route], ours: Mapping[str, int]
) -> list[str]:
    """MACs of the links carrying an IPv4 default route, in ROUTES' order (lowest metric
    first). A route with the metric our own file gave that NIC (OURS: MAC -> metric, for
    the NICs written as secondaries) is its DHCP route, no sign of the primary: counted, it
    would promote the NIC the moment its lease came, on a host whose primary carries no
    IPv4 default route."""
    names = {link.name: link.mac for link in links}
    return [
        names[r.ifname]
        for r in routes
        if r.ifname in names and r.metric != ours.get(names[r.ifname])
    ]


class RecentReads:
    """Each MAC's last full read (the listing and the raw answers) for a per-MAC source's
    ``predict``: the KEPT most recently read MACs only, so a host that saw thousands of MACs
    come and go keeps bounded memory (EC2, Alibaba)."""

    def __init__(self, kept: int = 256) -> None:
        self._kept = kept
        self._reads: OrderedDict[str, tuple[str, dict[str, str | None]]] = OrderedDict()

    def remember(self, mac: str, listing: str, raw: dict[str, str | None]) -> None:
        self._reads[mac] = (listing, raw)
        self._reads.move_to_end(mac)
        while len(self._reads) > self._kept:
            self._reads.popitem(last=False)

    def forget(self, mac: str) -> None:
        self._reads.pop(mac, None)

    def get(self, mac: str) -> tuple[str, dict[str, str | None]] | None:
        return self._reads.get(mac)
