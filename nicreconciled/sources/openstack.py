"""OpenStack: every port of the instance from one document, ``network_data.json``.

Why it looks the way it does (facts cited where they are used; see docs/clouds/openstack.md):

* Nova describes all ports in one document (openstack/nova nova/virt/netutils.py
  ``get_network_metadata``): ``links`` (one per port: ``id``, ``type``,
  ``ethernet_mac_address``, ``mtu``) and ``networks`` (each names its link by ``id``). It is
  fetched through a SharedAnswer: N NICs polling together cost one request.
* Nova's metadata API caches an instance's metadata for ``[api] metadata_cache_expiration``
  seconds (default 15; nova/conf/api.py), so a port attached a moment ago can be missing
  from the document: a "not-listed" flag (grace "unlisted") like EC2's unlisted MAC.
* Only static networks carry addresses. ``ipv4_dhcp`` / ``ipv6_dhcp`` name no address
  (nova writes them for subnets with ``enable_dhcp`` or a DHCP port, which is most Neutron
  deployments). Such a port is written DHCP-only at once, so that its DHCP client runs, and
  completed from the port's own lease (address, prefix, router: ``sources/leases.py``)
  with its table and rules when the lease appears, as CloudStack NICs are. Without the rule,
  replies from a second port's address leave by the first, whose port security drops them.
* The config drive is written once, when the instance boots (nova
  doc/source/user/metadata.rst, "Config drives"): it never shows a port attached later. It
  is read only when the service gives no usable answer; a hot-attached port is then
  "not-listed" until the service answers again.

The pure parsing (document -> ports -> Observation) is sources/openstack_parse.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import structlog
from pydantic import field_validator

from nicreconciled.config import Config, Section, check_endpoint
from nicreconciled.errors import FetchError, MetadataError
from nicreconciled.model import COMMON_FLAG_KINDS, Observation, normalize_mac
from nicreconciled.sources.common import SharedAnswer, device_numbers, parse_json, routed_macs
from nicreconciled.sources.http import HttpClient
from nicreconciled.sources.leases import LEASE_KEY, Lease, LocalLeases
from nicreconciled.sources.openstack_parse import (
    NETWORK_DATA,
    Document,
    build_observation,
    numbering,
    parse_document,
)
from nicreconciled.system import proc, sysfs

_log = structlog.get_logger(__name__)

DOCUMENT_TTL = 0.5
DETECT_TIMEOUT = 1.0
_DMI_VENDOR = "OpenStack Foundation"  # nova/version.py NOVA_VENDOR (libvirt sysinfo)
_DMI_PRODUCTS = ("OpenStack Nova", "OpenStack Compute")  # cloud-init tools/ds-identify


class OpenStackConfig(Section):
    """``[openstack]``: the metadata service, and a config drive to fall back on."""

    endpoint: str = "http://169.254.169.254"
    #: Where a config drive (label ``config-2``) is mounted; "" = no fallback.
    config_drive: str = ""

    _endpoint = field_validator("endpoint")(check_endpoint)

    @field_validator("config_drive")
    @classmethod
    def _drive(cls, value: str) -> str:
        if value and (not value.startswith("/") or "\0" in value):
            raise ValueError("must be an absolute path or empty")
        return value


class OpenStackSource:
    """network_data.json from the metadata service (or a config drive). One event loop."""

    name: ClassVar[str] = "openstack"
    Settings: ClassVar[type[Section]] = OpenStackConfig
    FLAG_KINDS: ClassVar[frozenset[str]] = COMMON_FLAG_KINDS
    ONE_ANSWER: ClassVar[bool] = True
    detect_error: str = "not detected"

    @classmethod
    def from_config(cls, config: Config, http: HttpClient) -> OpenStackSource:
        return cls(config.section(OpenStackConfig), http)

    @staticmethod
    def dmi_says(sys_root: Path) -> bool | None:
        """Nova's libvirt driver writes sys_vendor "OpenStack Foundation" and product_name
        "OpenStack Nova" (nova/version.py, nova/virt/libvirt/driver.py sysinfo); RDO's nova
        says "OpenStack Compute" (cloud-init tools/ds-identify, LP: #1675349)."""
        if sysfs.dmi("sys_vendor", sys_root) == _DMI_VENDOR:
            return True
        return True if sysfs.dmi("product_name", sys_root) in _DMI_PRODUCTS else None

    def __init__(
        self,
        config: OpenStackConfig,
        http: HttpClient,
        *,
        root: Path = Path("/"),
        runner: proc.Runner = proc.run,
        clock: Callable[[], float] = time.monotonic,
        ttl: float = DOCUMENT_TTL,
    ) -> None:
        self._http = http
        self._url = f"{config.endpoint}/{NETWORK_DATA}"
        self._drive = Path(config.config_drive) if config.config_drive else None
        self._root = root
        self._clock = clock
        self._leases = LocalLeases(root=root, runner=runner, clock=clock)
        self._document = SharedAnswer(self._load, ttl, clock)
        self._numbers: dict[str, int] = {}
        self._warned: set[str] = set()
        self._log = _log.bind(source="openstack")

    async def _get_service(self) -> str:
        answer = await self._http.request("GET", self._url)
        if answer.status != 200:
            raise FetchError(f"GET /{NETWORK_DATA}: HTTP {answer.status}")
        return answer.body

    async def _load(self) -> tuple[str, Document]:
        try:
            text = await self._get_service()
        except FetchError as exc:
            if self._drive is None:
                raise
            text = self._read_drive(str(exc))
        return text, parse_document(text)

    def _read_drive(self, why: str) -> str:
        assert self._drive is not None
        path = self._drive / NETWORK_DATA
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FetchError(f"{why}; config drive {path}: {exc}") from None
        self._log.warning("config_drive_used", reason=why, path=str(path))
        return text

    async def detect(self) -> bool:
        try:
            async with asyncio.timeout(DETECT_TIMEOUT):
                parse_json(NETWORK_DATA, await self._get_service(), dict)
        except Exception as exc:
            self.detect_error = "timeout" if isinstance(exc, TimeoutError) else str(exc)
            return False
        return True

    def _primary(self, document: Document, links: Sequence[sysfs.Link]) -> str | None:
        """The port carrying the kernel's IPv4 default route (lowest metric first), else the
        document's first; a port's own DHCP route does not count (common.routed_macs)."""
        ours = {m: numbering(n)[1] for m, n in self._numbers.items() if n > 0}
        for mac in routed_macs(links, self._leases.default_routes(), ours):
            if mac in document.ports:
                return mac
        return document.order[0] if document.order else None

    async def fetch(self, mac: str) -> Observation:
        mac = normalize_mac(mac)
        asked = self._clock()
        # An answer sent after this poll began (a SIGHUP or a resync must see a change made
        # a moment ago); polls that overlap share it, so N NICs polling together cost one.
        text, document = await self._document.get(newer_than=asked)
        for note in set(document.skipped) - self._warned:  # once each, not every poll
            self._warned.add(note)
            self._log.warning("openstack_skipped", what=note)
        port = document.ports.get(mac)
        for note in port.notes if port is not None else ():
            self._log.info("openstack_not_rendered", mac=mac, what=note)
        links = self._leases.links()
        primary = self._primary(document, links)
        numbers = device_numbers(links, primary)
        self._numbers.update(numbers)
        number = numbers.get(mac, self._numbers.get(mac, 99))
        lease = None
        if port is not None and port.dhcp4 and not port.ipv4:
            lease = await self._lease(mac, links)
        return build_observation(mac, document, primary, number, text, lease)

    async def _lease(self, mac: str, links: Sequence[sysfs.Link]) -> Lease | None:
        """MAC's own DHCP lease (None: no such NIC here, or no lease yet)."""
        names = [link.name for link in links if link.mac == mac]
        return await self._leases.leases_for(names[0]) if names else None

    async def probe(self, keys: Sequence[str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for key in keys:
            if key.startswith(LEASE_KEY):
                mac = normalize_mac(key.removeprefix(LEASE_KEY))
                lease = await self._lease(mac, self._leases.links())
                out[key] = lease.describe() if lease is not None else None
            elif key == NETWORK_DATA:
                out[key], _ = await self._document.get()
            else:
                raise ValueError(f"not an OpenStack probe key: {key[:80]!r}")
        return out

    def predict(self, mac: str, answers: Mapping[str, str | None]) -> Observation | None:
        """MAC's Observation from a probed document text (None: garbage or no answer)."""
        text = answers.get(NETWORK_DATA)
        number = self._numbers.get(normalize_mac(mac))
        if text is None or number is None:
            return None
        try:
            document = parse_document(text)
        except MetadataError:
            return None
        port = document.ports.get(normalize_mac(mac))
        if port is not None and port.dhcp4 and not port.ipv4:
            return None  # its state needs the lease: the full fetch that follows reads it
        primary = self._primary(document, self._leases.links())
        return build_observation(mac, document, primary, number, text)

    async def close(self) -> None:
        await self._http.close()
