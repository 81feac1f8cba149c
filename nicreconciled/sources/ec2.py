"""EC2 instance metadata (IMDSv2): the source. ``[ec2]``, the session token (a
``token.SessionToken``, its PUT sent through the fallback endpoint too), the fallback
endpoint, the ``macs/`` listing every NIC shares, per-MAC fetch, probes and predict(). What
the answers mean (and the red flags of metadata that is still propagating) is
ec2_parse.py's, a pure function of them.
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
from nicreconciled.model import COMMON_FLAG_KINDS, Observation, RedFlag, normalize_mac
from nicreconciled.sources.common import RecentReads, SharedAnswer, gather
from nicreconciled.sources.ec2_parse import (
    MACS_DIR,
    WANTED,
    key_path,
    listing_names,
    mac_dir,
    parse_mac_listing,
    parse_nic,
)
from nicreconciled.sources.http import Answer, HttpClient, TransportError
from nicreconciled.sources.token import TOKEN_PATH, SessionToken
from nicreconciled.system import sysfs

_log = structlog.get_logger(__name__)

#: How long one ``macs/`` listing answers for every NIC (a burst of attaches shares it).
LISTING_TTL = 0.5
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
#: detect() must stay cheap: on another cloud the link-local address usually times out.
DETECT_TIMEOUT = 1.0

#: DMI files that name Amazon EC2 on Nitro instances (sys_vendor, or the BIOS vendor).
_DMI_FIELDS = ("sys_vendor", "bios_vendor")
_PROBE_KEY = re.compile(r"meta-data/[A-Za-z0-9:._/-]*")


class Ec2Config(Section):
    """``[ec2]``: where IMDSv2 answers."""

    endpoint: str = "http://169.254.169.254"
    #: Tried when the endpoint cannot be reached; "" disables the fallback.
    fallback_endpoint: str = "http://[fd00:ec2::254]"
    token_ttl: int = Field(default=21600, ge=60, le=21600)

    _endpoint = field_validator("endpoint", "fallback_endpoint")(check_endpoint)


class Ec2Source:
    """IMDSv2 client for NIC metadata. Not safe to share between event loops."""

    name: ClassVar[str] = "ec2"
    Settings: ClassVar[type[Section]] = Ec2Config
    FLAG_KINDS: ClassVar[frozenset[str]] = COMMON_FLAG_KINDS | {
        "listed-but-404",
        "device-number-0",
        "ipv6-pending",
    }
    #: Each NIC has its own keys: re-checks are jittered per NIC (sources.Source).
    ONE_ANSWER: ClassVar[bool] = False
    #: Why the last detect() said no (for the "no cloud detected yet" line).
    detect_error: str = "not detected"

    @classmethod
    def from_config(cls, config: Config, http: HttpClient) -> Ec2Source:
        return cls(config.section(Ec2Config), http)

    @staticmethod
    def dmi_says(sys_root: Path) -> bool | None:
        """Nitro instances name Amazon in DMI; Xen ones may not (then a probe decides)."""
        vendor = " ".join(filter(None, (sysfs.dmi(f, sys_root) for f in _DMI_FIELDS)))
        return True if "Amazon EC2" in vendor else None

    def __init__(
        self,
        config: Ec2Config,
        http: HttpClient,
        log: structlog.typing.FilteringBoundLogger | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        listing_ttl: float = LISTING_TTL,
    ) -> None:
        self._http = http
        self._listing_ttl = listing_ttl
        self._endpoints = [config.endpoint]
        if config.fallback_endpoint and config.fallback_endpoint != config.endpoint:
            self._endpoints.append(config.fallback_endpoint)
        self._current = 0
        self._clock = clock
        self.token = SessionToken(
            self._put_token,
            TTL_HEADER,
            config.token_ttl,
            clock,
            hints={403: " (IMDS disabled?)"},
            on_obtained=lambda: self._log.debug(
                "imds_token_obtained", endpoint=self.endpoint, ttl=config.token_ttl
            ),
        )
        self._primary: str | None = None
        self._listing = SharedAnswer(self._get_listing, listing_ttl, clock)
        #: MAC -> its directory listing and raw answers (None = 404) at its last full read.
        self._raw = RecentReads()
        self._log = (log if log is not None else _log).bind(source="ec2")

    @property
    def endpoint(self) -> str:
        """The endpoint that answered last."""
        return self._endpoints[self._current]

    async def _send(self, method: str, path: str, headers: Mapping[str, str]) -> Answer:
        # Try the endpoint that answered last, then the other one; an HTTP status (even a
        # 5xx) proves the endpoint is reachable, so only transport failures move on.
        order = [self._current] + [i for i in range(len(self._endpoints)) if i != self._current]
        failures: list[str] = []
        for index in order:
            try:
                answer = await self._http.request(
                    method, f"{self._endpoints[index]}/latest/{path}", headers
                )
            except TransportError as exc:
                failures.append(f"{self._endpoints[index]}: {exc}" if failures else str(exc))
                continue
            if index != self._current:
                self._log.warning(
                    "imds_endpoint_switched",
                    endpoint=self._endpoints[index],
                    previous=self._endpoints[self._current],
                    reason=failures[0],
                )
                self._current = index
            return answer
        raise TransportError("; fallback ".join(failures))

    async def _put_token(self, headers: Mapping[str, str]) -> Answer:
        return await self._send("PUT", TOKEN_PATH, headers)

    async def _get(self, path: str) -> str | None:
        """Body of a GET under /latest/, None for 404."""
        for attempt in (1, 2):
            token = await self.token.get()
            answer = await self._send("GET", path, {TOKEN_HEADER: token})
            if answer.status == 200:
                return answer.body
            if answer.status == 404:
                return None
            if answer.status != 401:
                raise FetchError(f"GET /latest/{path}: HTTP {answer.status}")
            # Expired or revoked: drop it (unless a concurrent request already replaced
            # it) and retry once with a fresh one.
            self.token.refused(token)
            if attempt == 1:
                self._log.debug("imds_token_rejected", path=path)
        raise FetchError(f"GET /latest/{path}: HTTP 401 with a fresh token")

    async def _gather(self, paths: Sequence[str]) -> list[str | None]:
        return await gather([self._get(p) for p in paths])

    async def detect(self) -> bool:
        try:
            async with asyncio.timeout(DETECT_TIMEOUT):
                await self.token.get()
        except Exception as exc:
            self.detect_error = _reason(exc)
            self._log.debug("ec2_not_detected", reason=self.detect_error)
            return False
        return True

    async def primary_mac(self) -> str:
        if self._primary is None:
            text = await self._get("meta-data/mac")
            if text is None:
                raise FetchError("GET /latest/meta-data/mac: HTTP 404")
            try:
                self._primary = normalize_mac(text)
            except ValueError as exc:
                raise MetadataError(f"meta-data/mac: {exc}") from None
        return self._primary

    async def mac_listing(self, *, newer_than: float | None = None) -> str:
        """The ``macs/`` listing, one request shared by every NIC for ``listing_ttl`` seconds
        (with NEWER_THAN: one sent after that time). One request in flight at most.

        Whether a MAC is listed is learned here, not from each MAC's own 404: twenty NICs
        that are not ENIs cost one request per look, not twenty.
        """
        return await self._listing.get(newer_than=newer_than)

    async def _get_listing(self) -> str:
        text = await self._get(MACS_DIR)
        if text is None:
            raise FetchError(f"GET /latest/{MACS_DIR}: HTTP 404")
        return text

    async def list_macs(self, *, newer_than: float | None = None) -> frozenset[str]:
        macs, rejected = parse_mac_listing(await self.mac_listing(newer_than=newer_than))
        for entry in rejected:
            self._log.warning("imds_bad_mac_entry", entry=repr(entry[:64]))
        return macs

    def _known(self, mac: str) -> bool:
        """Named by the last ``macs/`` listing fetched, however old it is."""
        cached = self._listing.cached
        return cached is not None and mac in parse_mac_listing(cached[1])[0]

    async def fetch(self, mac: str) -> Observation:
        mac = normalize_mac(mac)
        directory = mac_dir(mac)
        asked = self._clock()
        # A MAC some listing named is asked for directly: its directory answering proves it
        # is listed, so a NIC's later polls cost no listing. Otherwise a cached listing
        # proves it is listed; that it is not, only a listing fetched after this poll began
        # does (a NIC attached a moment ago is not in an older one).
        known = self._known(mac)
        if not known and not await self._listed(mac, asked):
            return self._unlisted(mac)
        listing = await self._get(directory)
        if listing is None:
            if known and mac not in await self.list_macs(newer_than=asked):
                return self._unlisted(mac)  # gone upstream since the listing that named it
            self._raw.forget(mac)
            # Watch the listing too: a MAC that drops out of it (a detach that was still
            # propagating when the listing was read) must not wait for the deadline.
            watched = (MACS_DIR, directory)
            flag = RedFlag("listed-but-404", f"listed but 404: {directory}", watched)
            listed = self._last_listing()
            probe: dict[str, str | None] = {MACS_DIR: listed, directory: None}
            return Observation(mac=mac, state=None, flags=(flag,), probe=probe)
        primary = await self.primary_mac()
        names = listing_names(listing)
        keys = [k for k in WANTED if k in names]
        answers = await self._gather([key_path(mac, k) for k in keys])
        raw = dict(zip(keys, answers, strict=True))
        observation = parse_nic(mac, listing, raw, primary)
        self._raw.remember(mac, listing, raw)
        self._log.debug(
            "ec2_fetched",
            mac=mac,
            complete=observation.state is not None,
            flags=[f.kind for f in observation.flags],
        )
        return observation

    async def _listed(self, mac: str, asked: float) -> bool:
        return mac in await self.list_macs() or mac in await self.list_macs(newer_than=asked)

    def _unlisted(self, mac: str) -> Observation:
        self._raw.forget(mac)
        listed = self._last_listing()
        flag = RedFlag("not-listed", "MAC not in the metadata", (MACS_DIR,), "unlisted")
        return Observation(mac=mac, state=None, flags=(flag,), probe={MACS_DIR: listed})

    def _last_listing(self) -> str:
        cached = self._listing.cached
        return cached[1] if cached is not None else ""

    def predict(self, mac: str, answers: Mapping[str, str | None]) -> Observation | None:
        """What MAC's last full read gives with a probe's ANSWERS in place of its own; None
        when that cannot be told (no full read yet, a listing among the answers, garbage).

        The reconciler counts it as a sighting of the new state, which the full read that
        follows confirms or not: every answer the state is made of is then read twice.
        """
        mac = normalize_mac(mac)
        kept = self._raw.get(mac)
        if kept is None or self._primary is None:
            return None
        listing, raw = kept
        raw = dict(raw)
        names = listing_names(listing)
        directory = mac_dir(mac)
        for path, answer in answers.items():
            key = path.removeprefix(directory)
            if key == path or not key or "/" in key:
                return None  # a listing, or not one of this MAC's keys
            raw[key] = answer
            if answer is not None and key not in names:
                listing += f"\n{key}"  # answering means listed
        try:
            return parse_nic(mac, listing, raw, self._primary)
        except MetadataError:
            return None

    async def probe(self, keys: Sequence[str]) -> dict[str, str | None]:
        for key in keys:
            if not _PROBE_KEY.fullmatch(key) or ".." in key or "//" in key:
                raise ValueError(f"not a metadata probe key: {key[:80]!r}")
        listing = await self.mac_listing() if MACS_DIR in keys else None
        others = [k for k in keys if k != MACS_DIR]
        answers = dict(zip(others, await self._gather(others), strict=True))
        return {k: listing if k == MACS_DIR else answers[k] for k in keys}

    async def close(self) -> None:
        """Forget the token and close the HTTP client (it reopens if used again)."""
        self.token.forget()
        await self._http.close()


def _reason(exc: BaseException) -> str:
    """A short reason for a failed detection (a timeout has no message of its own)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    return str(exc) or type(exc).__name__
