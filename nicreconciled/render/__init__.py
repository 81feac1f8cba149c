"""Renderers: NicState -> {filename: text}. Pure; they never touch the filesystem."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar, Protocol

from nicreconciled.model import NicState

if TYPE_CHECKING:
    from nicreconciled.config import Config


class Renderer(Protocol):
    name: ClassVar[str]
    #: Every file this renderer produces starts with this and ends with ``suffix``.
    prefix: ClassVar[str]
    suffix: ClassVar[str]
    #: The file mode: 0600, except where the network stack reads as another user (networkd).
    mode: ClassVar[int]

    def filename(self, mac: str) -> str:
        """The one file name owned for MAC (a function of the MAC alone)."""
        ...

    def render(self, state: NicState) -> str:
        """The complete content of the NIC's file."""
        ...


def owned_names(renderer: Renderer) -> re.Pattern[str]:
    """Exactly the file names RENDERER produces (prefix, a MAC key, suffix): nothing else
    in output_dir is ever ours to touch."""
    return re.compile(re.escape(renderer.prefix) + "[0-9a-f]{12}" + re.escape(renderer.suffix))


def make_renderer(config: Config) -> Renderer:
    """The registry: one entry per renderer."""
    if config.renderer == "netplan":
        from nicreconciled.render.netplan import NetplanRenderer
        from nicreconciled.system.netplan import supports_ra_table

        # Asked (once per process) the first time a NIC needs it, never at start.
        return NetplanRenderer(config.netplan.backend, ra_table=supports_ra_table)
    if config.renderer == "networkmanager":
        from nicreconciled.render.networkmanager import NetworkManagerRenderer

        return NetworkManagerRenderer()
    if config.renderer == "networkd":
        from nicreconciled.render.networkd import NetworkdRenderer

        return NetworkdRenderer()
    raise ValueError(f"unsupported renderer {config.renderer!r}")
