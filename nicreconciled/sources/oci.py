"""Oracle Cloud Infrastructure: IMDSv2's ``/opc/v2/vnics/``, one JSON document for all VNICs.

The Source methods every one-document cloud shares (detect, fetch, predict, probe) are
``sources/onedoc.py``'s; this module requests the document and parses it.

Sources of the facts used here (their code is not reused):

* The document is a JSON array of VNIC objects: ``vnicId``, ``macAddr`` (upper case),
  ``privateIp``, ``subnetCidrBlock``, ``virtualRouterIp``, ``vlanTag``, ``nicIndex`` (bare
  metal only), and on IPv6 subnets ``ipv6Addresses`` (a list), ``ipv6SubnetCidrBlock``,
  ``ipv6VirtualRouterIp`` (a link-local address). An IPv6-only VNIC has no ``privateIp`` and
  reads ``subnetCidrBlock: "<null>"``. (canonical/cloud-init
  tests/unittests/sources/test_oracle.py, captured answers; oracle/oci-utils
  lib/oci_utils/vnicutils.py ``get_network_config``.)
* The primary VNIC is the first entry (cloud-init cloudinit/sources/DataSourceOracle.py
  ``_add_network_config_from_opc_imds`` treats ``vnics_data[0]`` as the primary; oci-utils
  vnicutils.py: "primary always come first").
* Secondary private IPs are not in the metadata: oci-utils reads them from the OCI API with
  instance principals (vnicutils.py ``_get_priv_addrs`` -> ``this_instance().all_private_ips()``),
  cloud-init and nm-cloud-setup (NetworkManager src/nm-cloud-setup/nmcs-provider-oci.c) use
  ``privateIp`` only. So a VNIC has exactly one IPv4 here.
* IMDSv2 wants ``Authorization: Bearer Oracle`` on every request; with v1 disabled, v1 paths
  answer 404 and a v2 request without the header "is rejected"
  (https://docs.oracle.com/iaas/Content/Compute/Tasks/gettingmetadata.htm); the status of that
  rejection is not documented, so any non-200 answer is a FetchError naming it.
* Bare metal: ``nicIndex`` in the first entry marks a bare-metal instance; there a VNIC with
  ``vlanTag`` 0 is a physical NIC and any other is a VLAN on the physical NIC ``nicIndex``
  (nmcs-provider-oci.c; cloud-init skips secondary VNICs on bare metal).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any, ClassVar

from pydantic import field_validator

from nicreconciled.config import Config, Section, check_endpoint
from nicreconciled.errors import FetchError, MetadataError
from nicreconciled.model import COMMON_FLAG_KINDS, Observation, RedFlag, normalize_mac
from nicreconciled.sources.common import SharedAnswer, entries, make_state, parse_json, scalar
from nicreconciled.sources.http import HttpClient
from nicreconciled.sources.onedoc import OneDocumentSource
from nicreconciled.system import sysfs

#: The one path read, relative to the endpoint; also the probe key of every flag.
VNICS_PATH = "opc/v2/vnics/"
HEADERS = {"Authorization": "Bearer Oracle"}
#: How long one document answers for every NIC (a burst of attaches shares it).
DOCUMENT_TTL = 0.5
#: More VNICs than any shape allows (the largest bare-metal shapes attach a few dozen).
MAX_VNICS = 256
#: "up to 32 maximum per VNIC" (https://docs.oracle.com/iaas/Content/Network/Concepts/ipv6.htm)
MAX_IPV6 = 32
#: 802.1Q tags; a ``vlanTag`` outside is garbage.
MAX_VLAN_TAG = 4095
#: nicIndex is a physical NIC of a bare-metal shape (two on current shapes); above: garbage.
MAX_NIC_INDEX = 3
#: What the service writes for a field it has no value for (an IPv6-only VNIC's IPv4 subnet).
NULL_TEXT = "<null>"
#: Tables of VNICs that cannot be numbered by their tag (none, or shared): by position.
FALLBACK_TABLE = 30000
#: Chassis asset tag of OCI VMs and bare-metal machines (cloud-init DataSourceOracle.py
#: CHASSIS_ASSET_TAG; doc/rtd/reference/datasources/oracle.rst).
CHASSIS_ASSET_TAG = "OracleCloud.com"

_VNIC_ID = re.compile(r"ocid1\.vnic\.[A-Za-z0-9._-]{1,240}")


class OciConfig(Section):
    """``[oci]``: where IMDSv2 answers."""

    endpoint: str = "http://169.254.169.254"

    _endpoint = field_validator("endpoint")(check_endpoint)


@dataclass(frozen=True)
class Vnic:
    """One validated entry of the document."""

    position: int
    mac: str
    vnic_id: str | None
    private_ip: IPv4Address | None
    subnet4: IPv4Network | None
    gateway4: IPv4Address | None
    vlan_tag: int | None
    nic_index: int | None
    ipv6s: tuple[IPv6Address, ...]
    subnet6: IPv6Network | None
    #: Parsed and validated, not rendered: NicState has no IPv6 gateway (the RA gives one).
    gateway6: IPv6Address | None


def numbering(vnic: Vnic, vnics: Sequence[Vnic]) -> tuple[int, int]:
    """(route table, route metric) of VNIC: table 10000 + 4096 x nicIndex + vlanTag, metric
    512 + the same offset (above the primary's DHCP route, which stays preferred).

    ``vlanTag`` is the tag of the VNIC's attachment (VnicAttachment.vlanTag in the OCI API):
    assigned at attach, kept while the VNIC is attached, and different for each VNIC of a VM
    in every captured answer. The array position is not stable: it shifts for every later
    VNIC when an earlier one is detached, which would renumber (re-render, drop flows of) a
    VNIC that did not change. ``nicIndex`` keeps bare-metal physical NICs, which all read tag
    0, apart. Range: 10000..26383, clear of EC2's and the kernel's tables.

    Should a VNIC have no tag, or share (nicIndex, tag) with an earlier entry, it falls back
    to 30000 + its position: unique, but not stable across the detach of an earlier VNIC.
    """
    tag = vnic.vlan_tag
    nic = vnic.nic_index or 0
    shared = any((v.nic_index or 0, v.vlan_tag) == (nic, tag) for v in vnics[: vnic.position])
    if tag is None or shared:
        return FALLBACK_TABLE + vnic.position, 512 + FALLBACK_TABLE - 10000 + vnic.position
    offset = 4096 * nic + tag
    return 10000 + offset, 512 + offset


# --- pure parsing -------------------------------------------------------------------------


def _where(position: int, key: str) -> str:
    return f"vnics[{position}].{key}"


def _text(entry: Mapping[str, Any], position: int, key: str) -> str | None:
    """A string field, None when absent, null or "<null>"; MetadataError for anything else."""
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MetadataError(
            f"{_where(position, key)}: expected a string, got {type(value).__name__}"
        )
    value = scalar(_where(position, key), value)
    return None if value in ("", NULL_TEXT) else value


def _parsed(entry: Mapping[str, Any], position: int, key: str, kind: Callable[[str], Any]) -> Any:
    text = _text(entry, position, key)
    if text is None:
        return None
    return entries(_where(position, key), [text], kind, 1)[0]


def _int(entry: Mapping[str, Any], position: int, key: str, limit: int) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise MetadataError(f"{_where(position, key)}: not an integer 0..{limit}: {value!r:.40}")
    return value


def parse_vnic(position: int, entry: object) -> Vnic:
    if not isinstance(entry, dict):
        raise MetadataError(f"vnics[{position}]: expected a JSON object")
    mac_text = _text(entry, position, "macAddr")
    if mac_text is None:
        raise MetadataError(f"{_where(position, 'macAddr')}: missing")
    try:
        mac = normalize_mac(mac_text)
    except ValueError:
        raise MetadataError(
            f"{_where(position, 'macAddr')}: not a MAC: {mac_text[:40]!r}"
        ) from None
    vnic_id = _text(entry, position, "vnicId")
    if vnic_id is not None and not _VNIC_ID.fullmatch(vnic_id):
        raise MetadataError(f"{_where(position, 'vnicId')}: not a VNIC OCID: {vnic_id[:40]!r}")
    private_ip = _parsed(entry, position, "privateIp", IPv4Address)
    subnet4 = _parsed(entry, position, "subnetCidrBlock", IPv4Network)
    gateway4 = _parsed(entry, position, "virtualRouterIp", IPv4Address)
    if subnet4 is not None:
        if subnet4.prefixlen > 30:
            raise MetadataError(f"{_where(position, 'subnetCidrBlock')}: /{subnet4.prefixlen}")
        for key, address in (("privateIp", private_ip), ("virtualRouterIp", gateway4)):
            if address is not None and address not in subnet4:
                raise MetadataError(f"{_where(position, key)}: {address} not in {subnet4}")
    raw6 = entry.get("ipv6Addresses")
    if raw6 is not None and (
        not isinstance(raw6, list) or not all(isinstance(a, str) for a in raw6)
    ):
        raise MetadataError(f"{_where(position, 'ipv6Addresses')}: expected a list of strings")
    ipv6s = entries(_where(position, "ipv6Addresses"), raw6 or [], IPv6Address, MAX_IPV6)
    subnet6 = _parsed(entry, position, "ipv6SubnetCidrBlock", IPv6Network)
    return Vnic(
        position=position,
        mac=mac,
        vnic_id=vnic_id,
        private_ip=private_ip,
        subnet4=subnet4,
        gateway4=gateway4,
        vlan_tag=_int(entry, position, "vlanTag", MAX_VLAN_TAG),
        nic_index=_int(entry, position, "nicIndex", MAX_NIC_INDEX),
        ipv6s=ipv6s,
        subnet6=subnet6,
        gateway6=_parsed(entry, position, "ipv6VirtualRouterIp", IPv6Address),
    )


def parse_vnics(text: str) -> tuple[Vnic, ...]:
    """Every VNIC of the document; MetadataError (one line, naming the field) for garbage
    anywhere in it: a document is used whole or not at all."""
    data = parse_json(VNICS_PATH, text, list)
    if len(data) > MAX_VNICS:
        raise MetadataError(f"{VNICS_PATH}: {len(data)} VNICs, more than {MAX_VNICS}")
    vnics = tuple(parse_vnic(i, entry) for i, entry in enumerate(data))
    seen: set[str] = set()
    for vnic in vnics:
        if vnic.mac in seen:
            raise MetadataError(f"{_where(vnic.position, 'macAddr')}: {vnic.mac} listed twice")
        seen.add(vnic.mac)
    return vnics


def parse_nic(mac: str, text: str) -> Observation:
    """The Observation of MAC in the document TEXT. Pure.

    The probe of every flag is the document itself: any change of it ends the wait.
    """
    mac = normalize_mac(mac)
    vnics = parse_vnics(text)
    probe: dict[str, str | None] = {VNICS_PATH: text}
    vnic = next((v for v in vnics if v.mac == mac), None)
    if vnic is None:
        flag = RedFlag("not-listed", "MAC not in the metadata", (VNICS_PATH,), "unlisted")
        return Observation(mac=mac, state=None, flags=(flag,), probe=probe)
    flags: list[RedFlag] = []
    ipv4 = {
        "privateIp": vnic.private_ip,
        "subnetCidrBlock": vnic.subnet4,
        "virtualRouterIp": vnic.gateway4,
    }
    complete4 = all(value is not None for value in ipv4.values())
    # An IPv6-only VNIC has none of its IPv4 fields (cloud-init's captured answers).
    ipv6_only = all(value is None for value in ipv4.values()) and bool(vnic.ipv6s)
    if not complete4 and not ipv6_only:
        missing = [key for key, value in ipv4.items() if value is None]
        detail = f"metadata incomplete: missing {', '.join(missing)}"
        flags.append(RedFlag("incomplete", detail, (VNICS_PATH,)))
    if vnic.subnet6 is not None and not vnic.ipv6s:
        detail = "subnet has IPv6 but the VNIC has none yet"
        flags.append(RedFlag("ipv6-pending", detail, (VNICS_PATH,), "ipv6"))
    state = None
    if complete4 or ipv6_only:
        table, metric = numbering(vnic, vnics)
        state = make_state(
            mac=mac,
            cloud="oci",
            primary=vnic.position == 0,
            # Only bare metal numbers its (physical) NICs; a VM's array position is no
            # number an exclusion could rely on (it shifts when an earlier VNIC detaches).
            device_number=vnic.nic_index,
            route_table=table,
            route_metric=metric,
            interface_id=vnic.vnic_id,
            ipv4_addresses=(vnic.private_ip,) if vnic.private_ip is not None else (),
            ipv4_subnet=vnic.subnet4,
            ipv4_gateway=vnic.gateway4,
            ipv6_addresses=vnic.ipv6s,
            ipv6_subnets=(vnic.subnet6,) if vnic.subnet6 is not None else (),
            # ipv6VirtualRouterIp: a static default route in T, no wait for an RA.
            ipv6_gateway=vnic.gateway6 if vnic.ipv6s else None,
        )
    return Observation(mac=mac, state=state, flags=tuple(flags), probe=probe)


# --- I/O ----------------------------------------------------------------------------------


class OciSource(OneDocumentSource[str]):
    """IMDSv2 client for VNIC metadata. Not safe to share between event loops."""

    name: ClassVar[str] = "oci"
    Settings: ClassVar[type[Section]] = OciConfig
    FLAG_KINDS: ClassVar[frozenset[str]] = COMMON_FLAG_KINDS | {"ipv6-pending"}
    PATH: ClassVar[str] = VNICS_PATH

    @classmethod
    def from_config(cls, config: Config, http: HttpClient) -> OciSource:
        return cls(config.section(OciConfig), http)

    @staticmethod
    def dmi_says(sys_root: Path) -> bool | None:
        """OCI VMs and bare-metal machines carry the chassis asset tag OracleCloud.com."""
        return True if sysfs.dmi("chassis_asset_tag", sys_root) == CHASSIS_ASSET_TAG else None

    def __init__(
        self,
        config: OciConfig,
        http: HttpClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        document_ttl: float = DOCUMENT_TTL,
    ) -> None:
        self._url = f"{config.endpoint}/{VNICS_PATH}"
        super().__init__(http, SharedAnswer(self._get_document, document_ttl, clock), clock)

    async def _get_document(self) -> str:
        answer = await self._http.request("GET", self._url, HEADERS)
        if answer.status != 200:
            hint = " (Authorization header refused?)" if answer.status in (401, 403) else ""
            raise FetchError(f"GET /{VNICS_PATH}: HTTP {answer.status}{hint}")
        return answer.body

    async def document(self, *, newer_than: float | None = None) -> str:
        """The ``vnics/`` document, one request shared by every NIC (with NEWER_THAN: one
        sent at or after that time). One request in flight at most."""
        return await self._document.get(newer_than=newer_than)

    def _observe(self, mac: str, text: str) -> Observation:
        return parse_nic(mac, text)
