"""Google Compute Engine: the metadata server's NIC document, fetched and long-polled.

One document, ``instance/network-interfaces/?recursive=true``, describes every NIC; what it
holds and how it becomes a NicState is ``sources/gce_parse.py``; the Source methods it shares
with OCI and Azure, ``sources/onedoc.py``. Sources of the facts used here (their code is not
reused):

* Every request carries ``Metadata-Flavor: Google``; the server refuses one without it with
  403 (Google's "Troubleshoot metadata server access" page lists 403 for requests failing its
  checks; cloud-init DataSourceGCE and google-guest-agent send the header on every request).
  No token. Default address ``http://metadata.google.internal`` (169.254.169.254).
* The long poll: ``?wait_for_change=true&last_etag=E&timeout_sec=N`` holds the request until
  the answer's ETag differs from E, then answers the new document and its ``ETag`` header;
  after N seconds it answers the unchanged one (same ETag). google-guest-agent
  internal/metadata/metadata.go (``Watch``: ``wait_for_change``, ``last_etag``, ``timeout_sec``
  60 with a 70 s client timeout, the ETag read from each answer).
* DMI: product name "Google Compute Engine" (older: "Google"), or a serial number starting
  "GoogleCloud-" when the product name is missing (cloud-init DataSourceGCE.py
  ``platform_reports_gce``, LP: #1674861). ``sys_vendor``/``bios_vendor`` "Google" alone say
  nothing: Chromebooks carry it too.
* Dynamic NICs (beta) are VLANs on a NIC, listed apart under ``vlan-network-interfaces/``
  (parent index -> VLAN id -> NIC with its own MAC; google-guest-agent creates them as VLAN
  links). Not managed here: looked at now and then and reported once per change.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

from pydantic import field_validator

from nicreconciled.config import Config, Section, check_endpoint
from nicreconciled.errors import FetchError
from nicreconciled.model import COMMON_FLAG_KINDS, Observation
from nicreconciled.sources.common import SharedAnswer
from nicreconciled.sources.gce_parse import NICS_PATH, VLANS_PATH, dynamic_nics, parse_nic
from nicreconciled.sources.http import Answer, HttpClient
from nicreconciled.sources.onedoc import OneDocumentSource
from nicreconciled.system import sysfs

HEADERS = {"Metadata-Flavor": "Google"}
#: How long one document answers for every NIC (a burst of re-checks shares it), and how long
#: a long poll's new document serves the re-checks it kicked without another request.
DOCUMENT_TTL = 0.5
#: How often the dynamic NICs are looked at (one request, piggybacked on a document fetch).
VLAN_INTERVAL = 600.0
#: An ETag longer than this is no ETag (the server's are 16 hex digits).
MAX_ETAG = 128
PRODUCT_NAMES = ("Google Compute Engine", "Google")
SERIAL_PREFIX = "GoogleCloud-"


class GceConfig(Section):
    """``[gce]``: where the metadata server answers."""

    endpoint: str = "http://metadata.google.internal"

    _endpoint = field_validator("endpoint")(check_endpoint)


class GceSource(OneDocumentSource[Answer]):
    """Metadata server client for NIC metadata. Not safe to share between event loops."""

    name: ClassVar[str] = "gce"
    Settings: ClassVar[type[Section]] = GceConfig
    FLAG_KINDS: ClassVar[frozenset[str]] = COMMON_FLAG_KINDS
    PATH: ClassVar[str] = NICS_PATH
    #: wait_for_change holds a request until the document changes (``nicreconciled.upstream``).
    LONG_POLL: ClassVar[bool] = True

    @classmethod
    def from_config(cls, config: Config, http: HttpClient) -> GceSource:
        return cls(config.section(GceConfig), http)

    @staticmethod
    def dmi_says(sys_root: Path) -> bool | None:
        if sysfs.dmi("product_name", sys_root) in PRODUCT_NAMES:
            return True
        serial = sysfs.dmi("product_serial", sys_root)
        return True if serial is not None and serial.startswith(SERIAL_PREFIX) else None

    def __init__(
        self,
        config: GceConfig,
        http: HttpClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        document_ttl: float = DOCUMENT_TTL,
        vlan_interval: float = VLAN_INTERVAL,
    ) -> None:
        self._url = f"{config.endpoint}/{NICS_PATH}?recursive=true"
        self._vlans_url = f"{config.endpoint}/{VLANS_PATH}?recursive=true"
        self._ttl = document_ttl
        super().__init__(http, SharedAnswer(self._get, document_ttl, clock), clock)
        #: The ETag the long poll last reported (fetches do not move it: a change one NIC's
        #: fetch saw is still news for the others).
        self._watch_etag: str | None = None
        #: When a long poll brought a new document (fetches shortly after are served it).
        self._handoff: float | None = None
        self._vlan_interval = vlan_interval
        self._vlans_due = 0.0
        self._vlans_seen: tuple[str, ...] = ()
        self._vlan_task: asyncio.Task[None] | None = None

    # --- requests -------------------------------------------------------------------------

    async def _request(self, url: str, *, timeout: float | None = None) -> Answer:
        answer = await self._http.request("GET", url, HEADERS, timeout=timeout)
        if answer.status != 200:
            hint = " (Metadata-Flavor header refused?)" if answer.status == 403 else ""
            raise FetchError(f"GET /{NICS_PATH}: HTTP {answer.status}{hint}")
        return answer

    async def _get(self) -> Answer:
        answer = await self._request(self._url)
        self._look_at_vlans()
        return answer

    async def document(self, *, newer_than: float | None = None) -> str:
        """The NIC document, one request shared by every NIC (with NEWER_THAN: one sent at or
        after that time, or brought by the long poll just now). One request in flight at most."""
        handoff = self._handoff
        if newer_than is not None and handoff is not None and newer_than - handoff < self._ttl:
            newer_than = min(newer_than, handoff)
        return (await self._document.get(newer_than=newer_than)).body

    # --- the long poll --------------------------------------------------------------------

    async def wait_for_change(self, timeout: float) -> bool:
        """One long poll with the last ETag seen (the first call learns it from a plain
        request first): True when the document changed (the next fetches read the new one
        without another request), False when TIMEOUT passed without a change. FetchError when
        the server gave no usable answer, MetadataError for an answer that is not text."""
        if self._watch_etag is None:
            first = await self._document.get(newer_than=self._clock())
            self._watch_etag = _etag(first)
        seconds = max(1, math.ceil(timeout))
        url = (
            f"{self._url}&wait_for_change=true&last_etag={quote(self._watch_etag, safe='')}"
            f"&timeout_sec={seconds}"
        )
        # The server answers after timeout_sec at the latest; its answer then gets as long as
        # any other request's (google-guest-agent allows 10 s over its 60).
        answer = await self._request(url, timeout=seconds + self._http.timeout)
        etag = _etag(answer)
        if etag == self._watch_etag:
            return False
        self._watch_etag = etag
        now = self._clock()
        self._document.cached = (now, answer)
        self._handoff = now
        self._log.debug("gce_long_poll_changed", etag=etag)
        return True

    # --- dynamic NICs ---------------------------------------------------------------------

    def _look_at_vlans(self) -> None:
        """Look at the dynamic NICs in the background when it is time (never a failure)."""
        now = self._clock()
        running = self._vlan_task is not None and not self._vlan_task.done()
        if now < self._vlans_due or running:
            return
        self._vlans_due = now + self._vlan_interval
        self._vlan_task = asyncio.ensure_future(self._check_vlans())

    async def _check_vlans(self) -> None:
        try:
            answer = await self._http.request("GET", self._vlans_url, HEADERS)
        except Exception as exc:  # only ever reported: nothing here may fail a fetch
            self._log.debug("gce_dynamic_nics_unknown", error=str(exc))
            return
        found = dynamic_nics(answer.body) if answer.status == 200 else ()
        if found == self._vlans_seen:
            return
        self._vlans_seen = found
        if found:
            self._log.warning(
                "gce_dynamic_nics_not_managed",
                dynamic_nics=list(found),
                reason="dynamic NICs (VLANs on a NIC) are not supported; left alone",
            )
        else:
            self._log.info("gce_dynamic_nics_gone")

    # --- the Source protocol (the rest is OneDocumentSource's) ----------------------------

    def _observe(self, mac: str, text: str) -> Observation:
        return parse_nic(mac, text)

    async def close(self) -> None:
        self._watch_etag = self._handoff = None
        if self._vlan_task is not None:
            self._vlan_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._vlan_task
        await super().close()


def _etag(answer: Answer) -> str:
    if answer.etag is None:
        raise FetchError(f"GET /{NICS_PATH}: no ETag in the answer")
    etag = answer.etag.strip()
    if not etag or len(etag) > MAX_ETAG or not etag.isprintable():
        raise FetchError(f"GET /{NICS_PATH}: not an ETag: {etag[:40]!r}")
    return etag
