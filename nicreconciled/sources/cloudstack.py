"""Apache CloudStack: NIC state from the NIC's DHCP lease, confirmed by its virtual router.

Why it looks the way it does:

* CloudStack metadata names no MACs, subnets or gateways: the virtual router (VR) answers
  for the VM by the request's source address. A NIC's address, prefix and gateway therefore
  come from its own DHCP lease (handed out by the VR's dnsmasq), and the metadata confirms
  that a VR answers and which address it gives the VM on its network (``local-ipv4``).
* Each guest network has its own VR. A NIC whose lease names a server asks that VR; any
  other NIC asks the default VR found by the discovery chain (vr_discovery). Both are
  cached, and dropped and re-discovered when they stop answering (a re-created VR may come
  back at another address).
* There are no device numbers: the NIC carrying the default route is 0 (CloudStack's VR
  hands out a router only on the default network) and the others get numbers derived from
  their ifindex, which does not change while the NIC exists (device_numbers()).
* Red flags name what they wait on, so the reconciler polls cheaply: a metadata URL, the
  canonical text of a NIC's lease (``lease:<mac>``) or its interface name (``link:<mac>``).

The pure parsing (the VR's answers and a NIC's lease -> Observation) is
sources/cloudstack_parse.py.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from ipaddress import IPv4Network
from pathlib import Path
from typing import ClassVar

import structlog
from pydantic import field_validator

from nicreconciled.config import Config, Section, check_endpoint
from nicreconciled.errors import FetchError, MetadataError
from nicreconciled.model import COMMON_FLAG_KINDS, Observation, RedFlag, normalize_mac
from nicreconciled.sources.cloudstack_parse import (
    ID_SHAPE,
    LINK_KEY,
    META,
    REQUIRED,
    build_state,
    link_key,
    metadata_url,
    numbering,
    parse_metadata,
)
from nicreconciled.sources.common import by_mac as _by_mac
from nicreconciled.sources.common import device_numbers, gather, routed_macs
from nicreconciled.sources.http import HttpClient
from nicreconciled.sources.leases import LEASE_KEY, Lease
from nicreconciled.sources.vr_discovery import Resolver, VrDiscovery, vr_url
from nicreconciled.system import proc, sysfs

_log = structlog.get_logger(__name__)

#: detect() on another cloud walks the whole chain; this bounds it.
DETECT_TIMEOUT = 3.0
#: A blackholed candidate (a gateway that drops port 80) must not stall discovery.
LIVENESS_TIMEOUT = 1.0
_KEY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class CloudStackConfig(Section):
    """``[cloudstack]``: the virtual router, when it is not to be discovered."""

    endpoint: str = ""

    _endpoint = field_validator("endpoint")(check_endpoint)


class CloudStackSource:
    """VR metadata plus local leases for NIC state. Not safe to share between event loops."""

    name: ClassVar[str] = "cloudstack"
    Settings: ClassVar[type[Section]] = CloudStackConfig
    FLAG_KINDS: ClassVar[frozenset[str]] = COMMON_FLAG_KINDS
    ONE_ANSWER: ClassVar[bool] = False
    #: Why the last detect() said no (for the "no cloud detected yet" line).
    detect_error: str = "not detected"

    @classmethod
    def from_config(cls, config: Config, http: HttpClient) -> CloudStackSource:
        return cls(config.section(CloudStackConfig), http)

    @staticmethod
    def dmi_says(sys_root: Path) -> bool | None:
        """CloudStack's KVM hosts name the product "CloudStack KVM Hypervisor"; other
        hypervisors it drives (XenServer, VMware) say nothing of CloudStack."""
        product = sysfs.dmi("product_name", sys_root) or ""
        return True if product.startswith("CloudStack") else None

    def __init__(
        self,
        config: CloudStackConfig,
        http: HttpClient,
        log: structlog.typing.FilteringBoundLogger | None = None,
        *,
        root: Path = Path("/"),
        runner: proc.Runner = proc.run,
        resolver: Resolver | None = None,
    ) -> None:
        self._http = http
        self._root = root
        self.discovery = VrDiscovery(config.endpoint, root=root, runner=runner, resolver=resolver)
        self._default: str | None = None
        self._discover_lock = asyncio.Lock()
        #: Guest network -> the VR that last answered for a NIC in it.
        self._by_network: dict[IPv4Network, str] = {}
        #: Every VR that answered: probe() fetches metadata URLs of these only.
        self._known: set[str] = set()
        self._log = (log if log is not None else _log).bind(source="cloudstack")

    @property
    def default_vr(self) -> str | None:
        """Base URL of the default VR once found."""
        return self._default

    async def _get(self, url: str) -> str | None:
        answer = await self._http.request("GET", url)
        if answer.status == 200:
            return answer.body
        if answer.status == 404:
            return None
        raise FetchError(f"GET {url}: HTTP {answer.status}")

    async def _gather(self, urls: Sequence[str]) -> list[str | None]:
        return await gather([self._get(u) for u in urls])

    async def _alive(self, vr: str) -> str | None:
        """Liveness of a candidate: a plausible instance-id, quickly. None = alive."""
        try:
            async with asyncio.timeout(LIVENESS_TIMEOUT):
                answer = await self._http.request("GET", metadata_url(vr, "instance-id"))
        except TimeoutError:
            return f"did not answer (timeout after {LIVENESS_TIMEOUT:g}s)"
        except FetchError as exc:
            return f"did not answer ({str(exc).partition(': ')[2] or exc})"
        except MetadataError:
            return "answered garbage for instance-id"
        if answer.status != 200:
            return f"answered HTTP {answer.status} for instance-id"
        # A home router's web page answers 200 to anything: demand an id.
        if not ID_SHAPE.fullmatch(answer.body.strip()):
            return "answered something that is not an instance-id"
        return None

    async def _read_vr(self, vr: str) -> dict[str, str | None]:
        """Raw answers of one VR; FetchError when it gives none or has no instance-id."""
        # Only what the state uses: instance-id (this is a VR, and which VM it serves) and
        # local-ipv4 (the VM's address on the VR's network). Two requests per poll.
        keys = list(REQUIRED)
        try:
            answers = await self._gather([metadata_url(vr, k) for k in keys])
        except FetchError as exc:
            raise FetchError(f"VR {vr}: {exc}") from None
        raw = dict(zip(keys, answers, strict=True))
        if not (raw.get("instance-id") or "").strip():
            raise FetchError(f"VR {vr}: no instance-id (not a virtual router?)")
        self._known.add(vr)
        return raw

    async def _discover(self, stale: str | None) -> str:
        # One discovery at a time: NICs attached together would otherwise each run the chain.
        async with self._discover_lock:
            if self._default is not None and self._default != stale:
                return self._default
            found = await self.discovery.find(self._alive)
            self._log.info("vr_discovered", vr=found.url, method=found.method, via=found.detail)
            self._default = found.url
            return found.url

    async def _read_default(self) -> tuple[str, dict[str, str | None]]:
        stale = self._default
        if stale is not None:
            try:
                return stale, await self._read_vr(stale)
            except FetchError as exc:
                self._log.warning("vr_not_answering", vr=stale, error=str(exc), next="discover")
        vr = await self._discover(stale)
        return vr, await self._read_vr(vr)

    async def _read_for(
        self, lease: Lease | None, *, primary: bool
    ) -> tuple[str, dict[str, str | None], bool]:
        """(VR, its answers, whether it is the VR of the NIC's own network)."""
        network = lease.network if lease is not None else None
        own: list[str] = []
        if lease is not None and lease.server is not None:
            own.append(vr_url(lease.server))
        if network is not None and network in self._by_network:
            own.append(self._by_network[network])
        for vr in dict.fromkeys(own):
            try:
                raw = await self._read_vr(vr)
            except FetchError as exc:
                self._log.warning("vr_not_answering", vr=vr, error=str(exc), next="default")
                if network is not None and self._by_network.get(network) == vr:
                    del self._by_network[network]
                continue
            if network is not None:
                self._by_network[network] = vr
            return vr, raw, True
        vr, raw = await self._read_default()
        return vr, raw, primary and not own

    async def detect(self) -> bool:
        product = sysfs.dmi("product_name", self._root / "sys") or ""
        if product.startswith("CloudStack"):
            return True
        try:
            async with asyncio.timeout(DETECT_TIMEOUT):
                await self._discover(None)
        except Exception as exc:
            self.detect_error = "timeout" if isinstance(exc, TimeoutError) else str(exc)
            self.detect_error = self.detect_error or type(exc).__name__
            self._log.debug("cloudstack_not_detected", reason=self.detect_error)
            return False
        return True

    async def fetch(self, mac: str) -> Observation:
        mac = normalize_mac(mac)
        links = self.discovery.links()
        link = _by_mac(links).get(mac)
        if link is None:
            key = link_key(mac)
            flag = RedFlag("not-listed", "no interface with this MAC on this machine", (key,))
            return Observation(mac=mac, state=None, flags=(flag,), probe={key: None})
        lease = await self.discovery.leases_for(link.name)
        # The NIC carrying the default route, not counting a NIC's own DHCP route.
        ours = {m: numbering(n)[1] for m, n in device_numbers(links, None).items()}
        routed = routed_macs(links, self.discovery.default_routes(), ours)
        primary_mac = routed[0] if routed else None
        vr, raw, own = await self._read_for(lease, primary=primary_mac == mac)
        if primary_mac is None and lease is not None and lease.address is not None:
            # No default route at all: the primary is the NIC the default VR knows.
            default = raw if vr == self._default else (await self._read_default())[1]
            if parse_metadata(default).local_ipv4 == lease.address:
                primary_mac = mac
        numbers = device_numbers(links, primary_mac)
        if mac not in numbers:
            raise FetchError(f"{mac}: no free device number (more than 100 NICs)")
        observation = build_state(
            mac,
            raw,
            lease,
            vr=vr,
            own_vr=own,
            primary=primary_mac == mac,
            device_number=numbers[mac],
        )
        flags = [f.kind for f in observation.flags]
        self._log.debug("cloudstack_fetched", mac=mac, ifname=link.name, vr=vr, flags=flags)
        return observation

    async def probe(self, keys: Sequence[str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        urls: list[str] = []
        for key in keys:
            if key.startswith((LINK_KEY, LEASE_KEY)):
                kind, _, mac = key.partition(":")
                link = _by_mac(self.discovery.links()).get(normalize_mac(mac))
                if kind == LINK_KEY[:-1]:
                    out[key] = link.name if link is not None else None
                else:
                    lease = await self.discovery.leases_for(link.name) if link else None
                    out[key] = lease.describe() if lease is not None else None
                continue
            base, _, name = key.partition(META)
            if base not in self._known or not _KEY_NAME.fullmatch(name):
                raise ValueError(f"not a CloudStack probe key: {key[:80]!r}")
            urls.append(key)
        out.update(zip(urls, await self._gather(urls), strict=True))
        return {key: out[key] for key in keys}

    async def close(self) -> None:
        """Close the HTTP client (it reopens if used again); the VRs found stay cached."""
        await self._http.close()
