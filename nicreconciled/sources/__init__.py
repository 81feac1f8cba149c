"""Metadata sources: the Source protocol, the registry, and cloud selection.

A cloud is one module in this package: its Source class (fetch, probe, detect), its
``[<name>]`` table (``Settings``, validated by config.parse), its red-flag kinds, how it numbers
its NICs' tables, and a DMI check that may settle detection before any network probe.
Registering it is one line in ``SOURCES`` (and its place in ``AUTO_ORDER``); nothing else in
the daemon names a cloud. ``sources/ec2.py`` is the example to read; like any cloud past
~400 lines, it keeps its pure parsing in a module of its own, ``ec2_parse.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import random
from collections.abc import Callable, Collection, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, cast

import structlog

from nicreconciled.config import use_source_tables
from nicreconciled.model import Observation

if TYPE_CHECKING:
    from nicreconciled.config import Config, Section
    from nicreconciled.sources.http import HttpClient

log = structlog.get_logger(__name__)

#: name -> "module:Class", imported when first used. The name is the value of ``cloud`` and
#: the name of the source's table in the configuration file.
SOURCES: dict[str, str] = {
    "ec2": "nicreconciled.sources.ec2:Ec2Source",
    "cloudstack": "nicreconciled.sources.cloudstack:CloudStackSource",
    "oci": "nicreconciled.sources.oci:OciSource",
    "openstack": "nicreconciled.sources.openstack:OpenStackSource",
    "gce": "nicreconciled.sources.gce:GceSource",
    "azure": "nicreconciled.sources.azure:AzureSource",
    "aliyun": "nicreconciled.sources.aliyun:AliyunSource",
}

#: The order in which ``cloud = "auto"`` probes the network when no DMI check settled it.
#: Cheap, fixed-address probes first; CloudStack's may walk the whole VR discovery chain.
AUTO_ORDER: tuple[str, ...] = ("ec2", "oci", "azure", "gce", "openstack", "aliyun", "cloudstack")


class Source(Protocol):
    """Where NIC metadata comes from. Sources fetch and parse; they never render or write.

    Every method raises FetchError when the service gives no usable answer and
    MetadataError when it answers garbage; neither may be mistaken for "absent".
    """

    #: Its key in SOURCES.
    name: ClassVar[str]
    #: Its table of the configuration file (a config.Section).
    Settings: ClassVar[type[Section]]
    #: Every RedFlag kind it reports (model.COMMON_FLAG_KINDS and its own).
    FLAG_KINDS: ClassVar[frozenset[str]]
    #: True when one answer describes every NIC (a SharedAnswer: OCI, OpenStack). The NICs'
    #: periodic re-checks then fall on one daemon-wide schedule, so that one fetch serves
    #: them all; False: each NIC's re-check is jittered on its own (EC2 asks per NIC).
    ONE_ANSWER: ClassVar[bool]
    #: Why the last detect() said no, in a few words ("timeout", "no virtual router: ...").
    detect_error: str

    @classmethod
    def from_config(cls, config: Config, http: HttpClient) -> Source: ...

    @staticmethod
    def dmi_says(sys_root: Path) -> bool | None:
        """From DMI alone (files under SYS_ROOT/class/dmi/id): True = this cloud, False =
        certainly not, None = cannot tell (then detect() probes). Never raises."""
        ...

    async def detect(self) -> bool:
        """Cheap check: is this the cloud we run on? Never raises."""
        ...

    async def fetch(self, mac: str) -> Observation:
        """A complete, parsed view of one MAC (state None when the metadata lacks the MAC)."""
        ...

    async def probe(self, keys: Sequence[str]) -> dict[str, str | None]:
        """Raw answers (None = absent) for the keys a red flag waits on."""
        ...

    async def close(self) -> None: ...


@cache
def source_class(name: str) -> type[Source]:
    """The registered class NAME (imported on first use); KeyError for an unknown name."""
    module, _, attr = SOURCES[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if cls.name != name:
        raise TypeError(f"{SOURCES[name]} calls itself {cls.name!r}, registered as {name!r}")
    return cast("type[Source]", cls)


class _Tables:
    """The registry as config sees it (config.SourceTables), handed over below: read from
    SOURCES when asked, so a name added to SOURCES is a table of the file at once."""

    def names(self) -> Collection[str]:
        return tuple(SOURCES)

    def settings(self, name: str) -> type[Section]:
        return source_class(name).Settings

    def name_of(self, kind: type[Section]) -> str | None:
        # Among the sources imported so far: a Settings class exists only once its module is.
        return {source_class(n).Settings: n for n in SOURCES if _imported(n)}.get(kind)


def _imported(name: str) -> bool:
    import sys

    return SOURCES[name].partition(":")[0] in sys.modules


use_source_tables(_Tables())


def all_sections(config: Config) -> dict[str, Section]:
    """Every registered source's table, as CONFIG has it (imports every source)."""
    return {name: config.section(source_class(name).Settings) for name in SOURCES}


def make_source(cloud: str, config: Config, http: HttpClient) -> Source:
    try:
        cls = source_class(cloud)
    except KeyError:
        raise ValueError(f"unsupported cloud {cloud!r}") from None
    return cls.from_config(config, http)


def dmi_verdict(sys_root: Path = Path("/sys")) -> tuple[str | None, tuple[str, ...]]:
    """(the cloud DMI names, if one does; the clouds DMI rules out). Reads files only."""
    ruled_out: list[str] = []
    for name in AUTO_ORDER:
        try:
            says = source_class(name).dmi_says(sys_root)
        except Exception as exc:  # a source's DMI check must never stop detection
            log.warning("dmi_check_failed", cloud=name, error=str(exc))
            continue
        if says is True:
            return name, tuple(ruled_out)
        if says is False:
            ruled_out.append(name)
    return None, tuple(ruled_out)


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
    sys_root: Path = Path("/sys"),
) -> Source:
    """The configured source, or (auto) the cloud DMI names, else the first that detects its
    cloud by a probe (in AUTO_ORDER, skipping those DMI rules out).

    Auto detection retries with jittered backoff up to MAX_WAIT between rounds (a short cap:
    detection is cheap, and a service that comes back should be used soon); ON_WAIT gets a
    one-line status for each wait (systemd's STATUS=, the daemon's status file); RETRY_NOW
    (SIGHUP) cuts a wait short. With GIVE_UP_AFTER (``once``, ``render``) it raises
    NoCloudError with that line once that many seconds have passed; else it never gives up.
    """
    if config.cloud != "auto":
        return make_source(config.cloud, config, http)
    named, ruled_out = dmi_verdict(sys_root)
    if named is not None:
        log.info("cloud_detected", cloud=named, method="dmi")
        return make_source(named, config, http)
    order = [name for name in AUTO_ORDER if name not in ruled_out] or list(AUTO_ORDER)
    loop = asyncio.get_running_loop()
    started = loop.time()
    delay = 0.5
    while True:
        tried = []
        for cloud in order:
            source = make_source(cloud, config, http)
            if await source.detect():
                log.info("cloud_detected", cloud=cloud, method="probe")
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
