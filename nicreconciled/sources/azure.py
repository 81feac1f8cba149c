"""Microsoft Azure: IMDS ``/metadata/instance/network``, one JSON document for every NIC.

Sources of the facts used here (their code is not reused; the parser's own facts are in
``azure_parse.py``, the whole picture in docs/clouds/azure.md; the Source methods shared with
OCI and GCE are ``onedoc.py``'s):

* ``GET http://169.254.169.254/metadata/instance/network?api-version=...`` with the header
  ``Metadata: true``; a request without it, or with an ``X-Forwarded-For`` header, is
  refused with ``400 Bad Request`` ("Required metadata header not specified"); an
  ``api-version`` is mandatory (400 without). 410 means "retry after some time for a max of
  70 seconds", 500 "retry after some time", 429 a rate limit exceeded. (Microsoft's IMDS page,
  MicrosoftDocs/azure-compute-docs articles/virtual-machines/instance-metadata-service.md,
  "Security and authentication", "Errors and debugging"; cloud-init
  cloudinit/sources/azure/imds.py retries 404, 410, 429 and 500.)
* "Requests to IMDS are limited to 5 requests per second (on a per VM basis). Requests
  exceeding this threshold will be rejected with 429 responses" (same page); the body is
  "Too many requests" (SUSE cloud-netconfig azure/functions.cloud-netconfig retries on that
  text). The limit is the VM's, shared with the Azure agent, cloud-init and extensions: this
  source sends at most ``MAX_RATE`` requests per second whatever the number of NICs, a burst
  of attaches or a resync (``Paced``), and pauses ``THROTTLED_PAUSE`` after a 429.
* "The nics returned by the network call are not guaranteed to be in order" (same page),
  while cloud-init takes the first interface as the primary NIC (canonical/cloud-init PR
  #5314, on Microsoft's word). The primary NIC is the one whose DHCP lease carries the
  routes to the wireserver and IMDS (cloud-init PR #4465 ``_check_if_primary``), the one
  IMDS must be reached through. So the primary here is the NIC carrying the kernel's IPv4
  default route (our own DHCP routes of secondary NICs excluded: ``common.routed_macs``), and
  the document's first interface only when no listed NIC carries one.
* DMI: every Azure VM has the chassis asset tag "7783-7084-3265-9085-8269-3286-77"
  (cloud-init DataSourceAzure.py ``AZURE_CHASSIS_ASSET_TAG``).
* NICs are attached to a deallocated VM only; secondary IP configurations can be added to a
  running one, and no Azure agent applies them live (WALinuxAgent #657 and #1885 declined;
  cloud-init applies them at the next boot; SUSE cloud-netconfig polls every minute): here
  they land at the next periodic check (``resync_interval``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import ClassVar

from pydantic import field_validator

from nicreconciled.config import Config, Section, check_endpoint
from nicreconciled.errors import FetchError
from nicreconciled.model import COMMON_FLAG_KINDS, Observation
from nicreconciled.sources.azure_parse import (
    API_VERSION,
    NETWORK_PATH,
    Document,
    build_observation,
    numbering,
    parse_document,
)
from nicreconciled.sources.common import SharedAnswer, device_numbers, routed_macs
from nicreconciled.sources.http import HttpClient, StatusError
from nicreconciled.sources.leases import LocalLeases
from nicreconciled.sources.onedoc import OneDocumentSource
from nicreconciled.system import proc, sysfs

HEADERS = {"Metadata": "true"}
#: How long one document answers for every NIC (a burst of polls shares it).
DOCUMENT_TTL = 0.5
#: Requests per second at most, every NIC and probe together: 2 of IMDS's 5 per VM (one
#: request every 0.5 s; never more than 3 in any second), the rest left to the agent.
MAX_RATE = 2.0
#: No request for this long after a 429 (the limit counts per second).
THROTTLED_PAUSE = 1.0
#: Chassis asset tag of every Azure VM (cloud-init ``AZURE_CHASSIS_ASSET_TAG``).
CHASSIS_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"

_HINTS = {
    400: " (Metadata header refused?)",
    410: " (IMDS is updating: retry within 70 s)",
}


class AzureConfig(Section):
    """``[azure]``: where IMDS answers."""

    endpoint: str = "http://169.254.169.254"

    _endpoint = field_validator("endpoint")(check_endpoint)


class Paced(SharedAnswer[str]):
    """A SharedAnswer whose requests leave at most RATE per second, and none for
    THROTTLED_PAUSE after a 429.

    The wait comes before the request's time is taken: a poll that began while the request
    waited for its turn is answered by it (SharedAnswer's ``newer_than``), so N NICs polling
    at any moment still cost one request, and a resync of every NIC costs one or two.
    """

    def __init__(
        self,
        load: Callable[[], Awaitable[str]],
        ttl: float,
        clock: Callable[[], float],
        rate: float,
    ) -> None:
        super().__init__(load, ttl, clock)
        self.spacing = 1.0 / rate
        #: No request before this (clock) time.
        self.not_before = float("-inf")

    async def _send(self) -> tuple[float, str]:
        delay = self.not_before - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        self.not_before = self._clock() + self.spacing
        try:
            return await super()._send()
        except StatusError as exc:
            if exc.status == 429:
                self.not_before = max(self.not_before, self._clock() + THROTTLED_PAUSE)
            raise


class AzureSource(OneDocumentSource[str]):
    """IMDS client for the VM's network metadata. Not safe to share between event loops."""

    name: ClassVar[str] = "azure"
    Settings: ClassVar[type[Section]] = AzureConfig
    FLAG_KINDS: ClassVar[frozenset[str]] = COMMON_FLAG_KINDS
    PATH: ClassVar[str] = NETWORK_PATH

    @classmethod
    def from_config(cls, config: Config, http: HttpClient) -> AzureSource:
        return cls(config.section(AzureConfig), http)

    @staticmethod
    def dmi_says(sys_root: Path) -> bool | None:
        """Azure VMs carry the chassis asset tag 7783-7084-3265-9085-8269-3286-77."""
        return True if sysfs.dmi("chassis_asset_tag", sys_root) == CHASSIS_ASSET_TAG else None

    def __init__(
        self,
        config: AzureConfig,
        http: HttpClient,
        *,
        root: Path = Path("/"),
        runner: proc.Runner = proc.run,
        clock: Callable[[], float] = time.monotonic,
        document_ttl: float = DOCUMENT_TTL,
        rate: float = MAX_RATE,
    ) -> None:
        self._url = f"{config.endpoint}/{NETWORK_PATH}?api-version={API_VERSION}"
        super().__init__(http, Paced(self._get_document, document_ttl, clock, rate), clock)
        #: sysfs and /proc/net/route under ROOT (the primary NIC, the device numbers).
        self._local = LocalLeases(root=root, runner=runner, clock=clock)
        #: MAC -> device number, kept for a NIC that is gone (its file is still named).
        self._numbers: dict[str, int] = {}

    async def _get_document(self) -> str:
        answer = await self._http.request("GET", self._url, HEADERS)
        if answer.status != 200:
            hint = _HINTS.get(answer.status, "")
            raise FetchError(f"GET /{NETWORK_PATH}: HTTP {answer.status}{hint}")
        return answer.body

    async def document(self, *, newer_than: float | None = None) -> str:
        """The network document, one paced request shared by every NIC (with NEWER_THAN:
        one sent at or after that time)."""
        return await self._document.get(newer_than=newer_than)

    def _check(self, text: str) -> None:
        # The document is an object ({"interface": [...]}), not an array: parsed whole.
        parse_document(text)

    def _primary(self, document: Document, links: Sequence[sysfs.Link]) -> str | None:
        """The listed NIC carrying the kernel's IPv4 default route (lowest metric first; a
        secondary NIC's own DHCP route does not count), else the document's first."""
        ours = {mac: numbering(n)[1] for mac, n in self._numbers.items() if n > 0}
        for mac in routed_macs(links, self._local.default_routes(), ours):
            if document.get(mac) is not None:
                return mac
        return document.first

    def _observe(self, mac: str, text: str) -> Observation:
        document = parse_document(text)
        links = self._local.links()
        primary = self._primary(document, links)
        numbers = device_numbers(links, primary)
        self._numbers.update(numbers)
        number = numbers.get(mac, self._numbers.get(mac, 99))
        return build_observation(mac, document, text, primary, number)
