"""Build the parts from the configuration (the only place that knows every concrete class)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import structlog

from nicreconciled.apply import Applier, NetworkdApplier
from nicreconciled.apply_netplan import NetplanNetworkdApplier, NetplanNetworkManagerApplier
from nicreconciled.apply_nm import NetworkManagerApplier
from nicreconciled.config import Config
from nicreconciled.daemon import Daemon
from nicreconciled.promise import Choices
from nicreconciled.reconciler import Context
from nicreconciled.render import make_renderer
from nicreconciled.sources import Source, make_source, select_source
from nicreconciled.sources.http import HttpClient
from nicreconciled.stability import Policy
from nicreconciled.status import StatusStore
from nicreconciled.system.stack import detect_renderer

log = structlog.get_logger(__name__)


def resolve_renderer(config: Config, root: Path = Path("/")) -> Config:
    """CONFIG with ``renderer = "auto"`` replaced by what this host uses (logged once)."""
    if config.renderer != "auto":
        return config
    renderer, why = detect_renderer(root)
    log.info("renderer_selected", renderer=renderer, reason=why)
    return config.model_copy(update={"renderer": renderer})


def make_applier(config: Config) -> Applier | None:
    if not config.apply:
        return None
    if config.renderer == "networkmanager":
        return NetworkManagerApplier()
    if config.renderer == "networkd":
        return NetworkdApplier()
    from nicreconciled.system.netplan import generate_command

    generate = generate_command(config.netplan.generator)
    if config.netplan.backend == "NetworkManager":
        return NetplanNetworkManagerApplier(generate=generate)
    return NetplanNetworkdApplier(generate=generate)


def make_http(config: Config) -> HttpClient:
    return HttpClient.from_polling(config.polling.request_rate, config.polling.request_timeout)


def choices(config: Config) -> Choices:
    """What the configured renderer can put in the kernel (promise.Choices)."""
    return Choices(
        rules=not (config.renderer == "netplan" and config.netplan.backend != "networkd")
    )


def build_context(config: Config, source: Source, *, apply: bool | None = None) -> Context:
    """The context every reconciler shares."""
    from nicreconciled.system import kernelstate

    return Context(
        source=source,
        renderer=make_renderer(config),
        applier=make_applier(config) if apply is not False else None,
        policy=Policy.from_config(config.polling),
        output_dir=config.effective_output_dir,
        status=StatusStore(config.state_dir),
        manage_primary=config.manage_primary,
        resync_interval=config.resync_interval,
        heal=config.kernel.heal,
        heal_limit=config.kernel.heal_limit,
        choices=choices(config),
        read_kernel=kernelstate.read,
    )


class Parts:
    """The HTTP client and the source once found; closed together."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.http = make_http(config)
        self.source: Source | None = None

    async def detect(
        self,
        *,
        give_up_after: float | None = None,
        on_wait: Callable[[str], object] = lambda line: None,
        retry_now: asyncio.Event | None = None,
    ) -> Source:
        self.source = await select_source(
            self.config,
            self.http,
            give_up_after=give_up_after,
            on_wait=on_wait,
            retry_now=retry_now,
        )
        return self.source

    async def close(self) -> None:
        if self.source is not None:
            await self.source.close()
        await self.http.close()


def make_daemon(config: Config, parts: Parts, *, once: bool = False) -> Daemon:
    """``run``: a pinned cloud is known at once; ``auto`` is found after READY=1, so a cloud
    that does not answer yet never holds up boot."""
    if config.cloud != "auto":
        parts.source = make_source(config.cloud, config, parts.http)
        return Daemon(config, build_context(config, parts.source), once=once)

    async def detect(on_wait: Callable[[str], object], retry_now: asyncio.Event) -> Context:
        source = await parts.detect(on_wait=on_wait, retry_now=retry_now)
        return build_context(config, source)

    return Daemon(config, detect=detect, once=once)
