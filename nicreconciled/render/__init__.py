"""Renderers: NicState -> {filename: text}. Pure; they never touch the filesystem."""

from __future__ import annotations

from typing import ClassVar, Protocol

from nicreconciled.model import NicState


class Renderer(Protocol):
    name: ClassVar[str]
    #: Every file this renderer produces starts with this and ends with ``suffix``.
    prefix: ClassVar[str]
    suffix: ClassVar[str]

    def filename(self, mac: str) -> str:
        """The one file name owned for MAC (a function of the MAC alone)."""
        ...

    def render(self, state: NicState) -> str:
        """The complete content of the NIC's file."""
        ...


def make_renderer(name: str) -> Renderer:
    """The registry: one line per renderer."""
    if name == "netplan":
        from nicreconciled.render.netplan import NetplanRenderer

        return NetplanRenderer()
    if name == "networkmanager":
        from nicreconciled.render.networkmanager import NetworkManagerRenderer

        return NetworkManagerRenderer()
    raise ValueError(f"unsupported renderer {name!r}")
