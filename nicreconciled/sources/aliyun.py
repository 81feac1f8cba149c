"""Alibaba Cloud ECS: the instance metadata service at 100.100.100.200, per MAC, with a token.

Sources of the facts used here (their code is not reused):

* Paths: ``/latest/meta-data/mac`` is the primary (eth0) NIC's MAC; ``network/interfaces/
  macs/`` lists one ``<mac>/`` per attached ENI; under it ``network-interface-id``
  (``eni-...``), ``primary-ip-address``, ``private-ipv4s`` (a JSON array,
  ``["192.168.0.9"]``), ``netmask``, ``gateway`` (the vSwitch's router, e.g. ``.253``, not
  the subnet's first address), ``vswitch-cidr-block``, ``vpc-cidr-block``, ``ipv6s``
  (``[2408:4005:...:e4e]``, brackets without quotes), ``ipv6-gateway``,
  ``vswitch-ipv6-cidr-block``. (Alibaba Cloud, "实例元数据",
  https://help.aliyun.com/zh/ecs/user-guide/view-instance-metadata; the shapes of both lists
  in AliyunContainerService/terway pkg/aliyun/metadata/metadata_test.go; nm-cloud-setup's
  src/nm-cloud-setup/nmcs-provider-aliyun.c strips ``[]"`` and splits on ``,``.)
* ``ipv6s`` answers 404 when the ENI has no IPv6 address (terway's metadata.go says so).
  No key numbers the ENIs: nm-cloud-setup numbers them by their position in ``macs/``,
  cloud-init (cloudinit/sources/helpers/aliyun.py) by their interface names.
* Hardened mode: ``PUT /latest/api/token`` with ``X-aliyun-ecs-metadata-token-ttl-seconds``
  (1..21600; out of range: 400), then ``X-aliyun-ecs-metadata-token`` on every request; an
  invalid token is refused with 401; on an instance set to hardened mode only, a request
  without a token is refused with 403 (same Alibaba page; cloud-init's DataSourceAliYun.py
  uses the same headers and drops its token on a 401). nm-cloud-setup sends no token, so
  it fails on such instances: this source always sends one, renews it before it expires,
  and fetches a new one once when a request is refused with 401 or 403 (``token.py``'s
  SessionToken, EC2's too).
* DMI: product name "Alibaba Cloud ECS" (cloud-init DataSourceAliYun.py ``_is_aliyun``).
* ENIs are hot-plugged on running instances, and their keys may trail the udev event
  (IPv6 later): red flags as on EC2 (``aliyun_parse.parse_nic``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import structlog
from pydantic import Field, field_validator

from nicreconciled.config import Config, Section, check_endpoint
from nicreconciled.errors import FetchError, MetadataError
from nicreconciled.model import Observation, RedFlag, normalize_mac
from nicreconciled.sources.aliyun_parse import (
    FLAG_KINDS,
    KEYS,
    MACS_DIR,
    PRIMARY_MAC,
    key_path,
    mac_dir,
    parse_mac_listing,
    parse_nic,
)
from nicreconciled.sources.common import RecentReads, SharedAnswer, gather
from nicreconciled.sources.http import Answer, HttpClient
from nicreconciled.sources.token import TOKEN_PATH, SessionToken
from nicreconciled.system import sysfs

_log = structlog.get_logger(__name__)

TTL_HEADER = "X-aliyun-ecs-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aliyun-ecs-metadata-token"
#: What /sys/class/dmi/id/product_name reads on ECS (cloud-init ALIYUN_PRODUCT).
PRODUCT_NAME = "Alibaba Cloud ECS"
#: detect() must stay cheap: on another cloud the address usually times out.
DETECT_TIMEOUT = 1.0
#: How long one ``macs/`` listing answers for every NIC (a burst of attaches shares it).
LISTING_TTL = 0.5
_TOKEN_HINTS = {400: " (TTL refused)", 403: " (metadata access refused)"}
_PROBE_KEY = re.compile(r"meta-data/[A-Za-z0-9:._/-]*")


class AliyunConfig(Section):
    """``[aliyun]``: where the metadata service answers, and the life of its tokens."""

    endpoint: str = "http://100.100.100.200"
    #: Seconds a token lives (the service allows 1..21600); renewed before it expires.
    token_ttl: int = Field(default=21600, ge=5, le=21600)

    _endpoint = field_validator("endpoint")(check_endpoint)


class AliyunSource:
    """Client for ENI metadata. Not safe to share between event loops."""

    name: ClassVar[str] = "aliyun"
    Settings: ClassVar[type[Section]] = AliyunConfig
    FLAG_KINDS: ClassVar[frozenset[str]] = FLAG_KINDS
    #: Each ENI has its own keys: re-checks are jittered per NIC (sources.Source).
    ONE_ANSWER: ClassVar[bool] = False
    detect_error: str = "not detected"

    @classmethod
    def from_config(cls, config: Config, http: HttpClient) -> AliyunSource:
        return cls(config.section(AliyunConfig), http)

    @staticmethod
    def dmi_says(sys_root: Path) -> bool | None:
        return True if sysfs.dmi("product_name", sys_root) == PRODUCT_NAME else None

    def __init__(
        self,
        config: AliyunConfig,
        http: HttpClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        listing_ttl: float = LISTING_TTL,
    ) -> None:
        self._http = http
        self._base = f"{config.endpoint}/latest/"
        self._clock = clock
        self.token = SessionToken(
            self._put_token, TTL_HEADER, config.token_ttl, clock, hints=_TOKEN_HINTS
        )
        self._primary: str | None = None
        self._primary_lock = asyncio.Lock()
        self._listing = SharedAnswer(self._get_listing, listing_ttl, clock)
        #: MAC -> the listing and raw answers (None = 404) of its last full read.
        self._raw = RecentReads()
        self._log = _log.bind(source="aliyun")

    async def _put_token(self, headers: Mapping[str, str]) -> Answer:
        return await self._http.request("PUT", self._base + TOKEN_PATH, headers)

    async def _get(self, path: str) -> str | None:
        """Body of a GET under /latest/, None for 404; a refused token is replaced once."""
        status = 0
        for attempt in (1, 2):
            token = await self.token.get()
            answer = await self._http.request("GET", self._base + path, {TOKEN_HEADER: token})
            status = answer.status
            if status == 200:
                return answer.body
            if status == 404:
                return None
            if status not in (401, 403):
                raise FetchError(f"GET /latest/{path}: HTTP {status}")
            # 401: expired or revoked; 403: hardened mode saw no valid token. Either way a
            # fresh token, once (unless a concurrent request replaced this one already); a
            # fresh token refused too is not the token's fault: it is kept.
            if attempt == 1:
                self.token.refused(token)
                self._log.debug("metadata_token_refused", path=path, status=status)
        raise FetchError(f"GET /latest/{path}: HTTP {status} with a fresh token")

    async def detect(self) -> bool:
        try:
            async with asyncio.timeout(DETECT_TIMEOUT):
                await self.token.get()
        except Exception as exc:
            self.detect_error = "timeout" if isinstance(exc, TimeoutError) else str(exc)
            self._log.debug("aliyun_not_detected", reason=self.detect_error)
            return False
        return True

    async def primary_mac(self) -> str:
        async with self._primary_lock:  # NICs attached together ask once
            return await self._primary_mac()

    async def _primary_mac(self) -> str:
        if self._primary is None:
            text = await self._get(PRIMARY_MAC)
            if text is None:
                raise FetchError(f"GET /latest/{PRIMARY_MAC}: HTTP 404")
            try:
                self._primary = normalize_mac(text)
            except ValueError as exc:
                raise MetadataError(f"{PRIMARY_MAC}: {exc}") from None
        return self._primary

    async def _get_listing(self) -> str:
        text = await self._get(MACS_DIR)
        if text is None:
            raise FetchError(f"GET /latest/{MACS_DIR}: HTTP 404")
        return text

    async def list_macs(self, *, newer_than: float | None = None) -> frozenset[str]:
        """The listed MACs, one ``macs/`` request shared by every NIC (with NEWER_THAN: one
        sent at or after that time)."""
        macs, rejected = parse_mac_listing(await self._listing.get(newer_than=newer_than))
        for entry in rejected:
            self._log.warning("metadata_bad_mac_entry", entry=repr(entry[:64]))
        return macs

    def _last_listing(self) -> str:
        cached = self._listing.cached
        return cached[1] if cached is not None else ""

    def _known(self, mac: str) -> bool:
        """Named by the last listing fetched, however old it is."""
        cached = self._listing.cached
        return cached is not None and mac in parse_mac_listing(cached[1])[0]

    async def fetch(self, mac: str) -> Observation:
        mac = normalize_mac(mac)
        asked = self._clock()
        # A MAC some listing named is asked for directly (a NIC's later polls cost no
        # listing); that it is not listed, only a listing sent after this poll began proves.
        known = self._known(mac)
        if not known and not await self._listed(mac, asked):
            return self._unlisted(mac)
        primary = await self.primary_mac()
        answers = await gather([self._get(key_path(mac, key)) for key in KEYS])
        raw = dict(zip(KEYS, answers, strict=True))
        gone = known and all(a is None for a in answers)
        if gone and mac not in await self.list_macs(newer_than=asked):
            return self._unlisted(mac)  # detached upstream since the listing named it
        listing = self._last_listing()
        observation = parse_nic(mac, listing, raw, primary)
        self._raw.remember(mac, listing, raw)
        self._log.debug(
            "aliyun_fetched",
            mac=mac,
            complete=observation.state is not None,
            flags=[f.kind for f in observation.flags],
        )
        return observation

    async def _listed(self, mac: str, asked: float) -> bool:
        return mac in await self.list_macs() or mac in await self.list_macs(newer_than=asked)

    def _unlisted(self, mac: str) -> Observation:
        self._raw.forget(mac)
        flag = RedFlag("not-listed", "MAC not in the metadata", (MACS_DIR,), "unlisted")
        return Observation(
            mac=mac, state=None, flags=(flag,), probe={MACS_DIR: self._last_listing()}
        )

    def predict(self, mac: str, answers: Mapping[str, str | None]) -> Observation | None:
        """MAC's last full read with a probe's ANSWERS in place of its own; None when that
        cannot be told (no full read yet, the listing among the answers, garbage)."""
        mac = normalize_mac(mac)
        kept = self._raw.get(mac)
        if kept is None or self._primary is None:
            return None
        listing, raw = kept
        raw = dict(raw)
        for path, answer in answers.items():
            key = path.removeprefix(mac_dir(mac))
            if key not in KEYS:
                return None  # the listing, or not one of this MAC's keys
            raw[key] = answer
        try:
            return parse_nic(mac, listing, raw, self._primary)
        except MetadataError:
            return None

    async def probe(self, keys: Sequence[str]) -> dict[str, str | None]:
        for key in keys:
            if not _PROBE_KEY.fullmatch(key) or ".." in key or "//" in key:
                raise ValueError(f"not a metadata probe key: {key[:80]!r}")
        listing = await self._listing.get() if MACS_DIR in keys else None
        others = [k for k in keys if k != MACS_DIR]
        answers = dict(zip(others, await gather([self._get(k) for k in others]), strict=True))
        return {k: listing if k == MACS_DIR else answers[k] for k in keys}

    async def close(self) -> None:
        """Forget the token and the listing, close the HTTP client (it reopens if used)."""
        self.token.forget()
        self._listing.forget()
        await self._http.close()
