"""Reading other tools' files for conflicts.py: read-only, and never raising.

An unreadable, oversized or vanished file (or directory) reads as nothing: a file its own
tool cannot read configures nothing either.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from nicreconciled.model import normalize_mac

#: NetworkManager's keyfile directories (conflicts.py, conflicts_gce.py).
NM_DIRS: Final = (
    "etc/NetworkManager/system-connections",
    "run/NetworkManager/system-connections",
    "usr/lib/NetworkManager/system-connections",
)

#: Files larger than this are not configuration we could be competing with; skip them.
MAX_FILE_BYTES: Final = 1 << 20


def keyfile_mac(value: str) -> str | None:
    """A keyfile MAC: ``0A:1B:..`` or the old list of decimal bytes ``10;27;..``."""
    value = value.strip()
    if ";" in value:
        try:
            octets = [int(b) for b in value.strip(";").split(";")]
            value = ":".join(f"{b:02x}" for b in octets if 0 <= b <= 255)
        except ValueError:
            return None
    try:
        return normalize_mac(value)
    except ValueError:
        return None


def files(directory: Path, *, suffix: str | None, dirs: bool = False) -> list[Path]:
    """Entries of DIRECTORY (sorted; none if it is unreadable), regular files or dirs."""
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return []
    out = []
    for entry in entries:
        if suffix is not None and not entry.name.endswith(suffix):
            continue
        try:
            if entry.is_dir() if dirs else entry.is_file():
                out.append(entry)
        except OSError:
            continue
    return out


def is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def read_text(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def exists(path: Path) -> bool:
    # lexists: amazon-ec2-net-utils' 70-IFACE.network is a symlink into /usr/lib, which may
    # not resolve under a test root (or at all, after a package removal).
    return os.path.lexists(path)


def masked(path: Path) -> bool:
    """A systemd-style mask: a link to /dev/null, or an empty file, in an override dir."""
    try:
        if path.is_symlink():
            return os.readlink(path) == os.devnull
        return path.is_file() and path.stat().st_size == 0
    except OSError:
        return False
