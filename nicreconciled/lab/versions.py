"""Versions of the stack a lab runs (the root the tests run in: Debian 12's on the host, 13's
under ``scripts/suite-lab trixie``). A test whose expectation depends on the stack picks it
from these, never from a probe of the behaviour it asserts (a probe that went wrong would
pick the other expectation and pass)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nicreconciled.lab.base import LabBase


def systemd_major(lab: LabBase) -> int:
    """systemd's version (networkd's), e.g. 252 or 257: ``networkctl --version``."""
    first = lab.run(["networkctl", "--version"]).stdout.partition("\n")[0]
    match = re.match(r"systemd (\d+)\b", first)
    if match is None:
        raise ValueError(f"networkctl --version: {first!r}")
    return int(match[1])


def package_version(lab: LabBase, package: str) -> tuple[int, ...]:
    """The leading numbers of an installed Debian package's upstream version:
    ``0.106-2+deb12u1`` -> (0, 106), ``1.1.2-7`` -> (1, 1, 2)."""
    text = lab.run(["dpkg-query", "-W", "-f", "${Version}", package]).stdout.strip()
    match = re.match(r"(?:\d+:)?(\d+(?:\.\d+)*)", text)
    if match is None:
        raise ValueError(f"{package}: version {text!r}")
    return tuple(int(part) for part in match[1].split("."))
