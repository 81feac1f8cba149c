"""Metadata sources: the Source protocol, the registry, and cloud selection."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import structlog

from nicreconciled.model import Cloud, Observation

if TYPE_CHECKING:
    from nicreconciled.config import Config
    from nicreconciled.sources.http import HttpClient

log = structlog.get_logger(__name__)


class Source(Protocol):
    """Where NIC metadata comes from. Sources fetch and parse; they never render or write.

    Every method raises FetchError when the service gives no usable answer and
    MetadataError when it answers garbage; neither may be mistaken for "absent".
    """

    name: Cloud
    #: Why the last detect() said no, in a few words ("timeout", "no virtual router: ...").
    detect_error: str

    async def detect(self) -> bool:
        """Cheap check: is this the cloud we run on? Never raises."""
        ...

    async def fetch(self, mac: str) -> Observation:
        """A complete, parsed view of one MAC (state None when the metadata lacks the MAC)."""
        ...

    async def probe(self, keys: Sequence[str]) -> dict[str, str | None]:
        """Raw answers (None = absent) for the keys a red flag waits on; one request each."""
        ...

    async def close(self) -> None: ...


def make_source(cloud: Cloud, config: Config, http: HttpClient) -> Source:
    """The registry: one line per cloud."""
    if cloud == "ec2":
        from nicreconciled.sources.ec2 import Ec2Source

        return Ec2Source(config.ec2, http)
    if cloud == "cloudstack":
        from nicreconciled.sources.cloudstack import CloudStackSource

        return CloudStackSource(config.cloudstack, http)
    raise ValueError(f"unsupported cloud {cloud!r}")


#: The order in which ``cloud = "auto"`` probes. EC2 first: its detect() is one request to
#: a fixed address, CloudStack's may walk the whole VR discovery chain.
AUTO_ORDER: tuple[Cloud, ...] = ("ec2", "cloudstack")


class NoCloudError(Exception):
    """``cloud = "auto"`` found no cloud within the time it was given."""


async def select_source(
    config: Config,
    http: HttpClient,
    *,
    max_wait: float = 10.0,
    give_up_after: float | None = None,
    on_wait: Callable[[str], object] = lambda line: None,
    retry_now: asyncio.Event | None = None,
) -> Source:
    """The configured source, or (auto) the first that detects its cloud.

    Auto detection retries with jittered backoff up to MAX_WAIT between rounds (a short cap:
    detection is cheap, and a service that comes back should be used soon); ON_WAIT gets a
    one-line status for each wait (systemd's STATUS=, the daemon's status file); RETRY_NOW
    (SIGHUP) cuts a wait short. With GIVE_UP_AFTER (``once``, ``render``) it raises
    NoCloudError with that line once that many seconds have passed; else it never gives up.
    """
    if config.cloud != "auto":
        return make_source(config.cloud, config, http)
    loop = asyncio.get_running_loop()
    started = loop.time()
    delay = 0.5
    while True:
        tried = []
        for cloud in AUTO_ORDER:
            source = make_source(cloud, config, http)
            if await source.detect():
                log.info("cloud_detected", cloud=cloud)
                return source
            tried.append(f"{cloud} ({source.detect_error})")
            await source.close()
        line = f"no cloud detected yet: tried {', '.join(tried)}"
        waited = loop.time() - started
        if give_up_after is not None and waited >= give_up_after:
            raise NoCloudError(f"no cloud detected after {waited:.0f} s: tried {', '.join(tried)}")
        log.warning("no_cloud_detected", tried=tried, retry_in=round(delay, 1))
        on_wait(line)
        pause = delay * random.uniform(0.8, 1.2)
        if give_up_after is not None:
            pause = min(pause, max(0.0, give_up_after - waited))
        if retry_now is None:
            await asyncio.sleep(pause)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(retry_now.wait(), pause)
            retry_now.clear()
        delay = min(delay * 2, max_wait)
