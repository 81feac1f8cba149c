"""Build the parts from the configuration (the only place that knows every concrete class)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nicreconciled import systemd
from nicreconciled.apply import (
    Applier,
    NetplanNetworkdApplier,
    NetplanNetworkManagerApplier,
    NetworkManagerApplier,
)
from nicreconciled.config import Config
from nicreconciled.daemon import Daemon
from nicreconciled.reconciler import Context
from nicreconciled.render import make_renderer
from nicreconciled.sources import select_source
from nicreconciled.sources.http import HttpClient
from nicreconciled.stability import Policy
from nicreconciled.status import StatusStore


def make_applier(config: Config) -> Applier | None:
    if not config.apply:
        return None
    if config.renderer == "networkmanager":
        return NetworkManagerApplier()
    if config.netplan.backend == "NetworkManager":
        return NetplanNetworkManagerApplier()
    return NetplanNetworkdApplier()


async def build_context(
    config: Config, *, apply: bool | None = None
) -> tuple[Context, Callable[[], Awaitable[None]]]:
    """The shared reconciler context and a coroutine function that releases it."""
    http = HttpClient.from_polling(config.polling.request_rate, config.polling.request_timeout)
    source = await select_source(
        config, http, on_wait=lambda line: systemd.notify(systemd.status(line))
    )

    async def close() -> None:
        await source.close()
        await http.close()

    ctx = Context(
        source=source,
        renderer=make_renderer(config),
        applier=make_applier(config) if apply is not False else None,
        policy=Policy.from_config(config.polling),
        output_dir=config.effective_output_dir,
        status=StatusStore(config.state_dir),
        manage_primary=config.manage_primary,
        resync_interval=config.resync_interval,
    )
    return ctx, close


def make_daemon(config: Config, ctx: Context, *, once: bool = False) -> Daemon:
    return Daemon(config, ctx, once=once)
