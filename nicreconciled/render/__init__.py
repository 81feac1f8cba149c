"""Renderers: NicState -> {filename: text}. Pure; they never touch the filesystem."""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING, ClassVar, Protocol, cast

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

    @classmethod
    def from_config(cls, config: Config) -> Renderer: ...

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


#: name -> "module:Class", imported when first used; the name is the value of ``renderer``.
RENDERERS: dict[str, str] = {
    "netplan": "nicreconciled.render.netplan:NetplanRenderer",
    "networkmanager": "nicreconciled.render.networkmanager:NetworkManagerRenderer",
    "networkd": "nicreconciled.render.networkd:NetworkdRenderer",
}


def make_renderer(config: Config) -> Renderer:
    """The configured renderer (``renderer = "auto"`` must be resolved first: wiring)."""
    if config.renderer not in RENDERERS:
        raise ValueError(f"unsupported renderer {config.renderer!r}")
    module, _, name = RENDERERS[config.renderer].partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cast(Renderer, cls.from_config(config))
