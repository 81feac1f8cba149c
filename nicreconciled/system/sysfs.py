"""Network links present now, DMI strings and the udev database, under injectable roots."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nicreconciled.model import normalize_mac

ARPHRD_ETHER = 1


@dataclass(frozen=True)
class Link:
    name: str
    mac: str
    ifindex: int
    #: Under /sys/devices/virtual: veth, bridge, bond, ... (never a cloud NIC).
    virtual: bool
    ethernet: bool
    #: Has a master (``/sys/class/net/X/master``): a bond's or bridge's port, or a VF that
    #: its synthetic NIC took over (Azure accelerated networking: same MAC as that NIC).
    enslaved: bool = False


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def read_link(name: str, root: Path = Path("/sys")) -> Link | None:
    """The link called NAME, or None if it vanished or has no usable MAC."""
    if not name or "/" in name or name in (".", ".."):
        return None
    base = root / "class" / "net" / name
    address = _read(base / "address")
    ifindex = _read(base / "ifindex")
    kind = _read(base / "type")
    if address is None or ifindex is None:
        return None
    try:
        mac = normalize_mac(address)
        index = int(ifindex)
    except ValueError:
        return None  # loopback/tunnels have no 6-byte MAC
    if mac == "00:00:00:00:00:00":
        return None
    real = os.path.realpath(base)
    virtual = "/devices/virtual/" in real
    enslaved = os.path.lexists(base / "master")
    return Link(name, mac, index, virtual, kind == str(ARPHRD_ETHER), enslaved)


def list_links(root: Path = Path("/sys")) -> list[Link]:
    try:
        names = sorted(os.listdir(root / "class" / "net"))
    except OSError:
        return []
    links = (read_link(n, root) for n in names)
    return [link for link in links if link is not None]


def dmi(field: str, root: Path = Path("/sys")) -> str | None:
    """A DMI string such as sys_vendor or product_name; None when unreadable."""
    return _read(root / "class" / "dmi" / "id" / field)


#: Bigger than any real udev database entry; a larger one is not read.
_UDEV_DB_LIMIT = 256 * 1024


def udev_properties(ifindex: int, run: Path = Path("/run")) -> dict[str, str] | None:
    """The udev properties of the network device IFINDEX (``E:KEY=value`` lines of
    ``/run/udev/data/n<ifindex>``); None when udev has no entry for it (not processed yet,
    or no udevd). udevd writes the entry before it sends the event, and always writes one
    for a network device it has processed. An entry that cannot be read counts as one
    without properties: nothing then says the NIC is someone else's.
    """
    path = run / "udev" / "data" / f"n{ifindex}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(_UDEV_DB_LIMIT + 1)
    except OSError:
        return {}
    finally:
        os.close(fd)
    if len(data) > _UDEV_DB_LIMIT:
        return {}
    properties = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        key, eq, value = line.removeprefix("E:").partition("=")
        if line.startswith("E:") and eq and key:
            properties[key] = value
    return properties


def udev_running(run: Path = Path("/run")) -> bool:
    """udevd runs (its control socket exists: how libudev itself tells)."""
    return os.path.lexists(run / "udev" / "control")


def boot_id(path: Path = Path("/proc/sys/kernel/random/boot_id")) -> str:
    """This boot's id: what was loaded into the network stack in another boot is gone."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""
