"""Which network stack owns this host: what ``renderer = "auto"`` resolves to."""

from __future__ import annotations

import shutil
from pathlib import Path


def detect_renderer(root: Path = Path("/")) -> tuple[str, str]:
    """(renderer, why), in this order: netplan when it is installed and ``/etc/netplan``
    holds a configuration (Ubuntu, Debian cloud images); else NetworkManager when it runs
    (Fedora, RHEL); else systemd-networkd when it runs (Amazon Linux 2023, Arch, Flatcar);
    else netplan, the project's long-standing default. Only files are read: no daemon is
    asked, so this works inside the unit's confinement and before any D-Bus is up."""
    netplan = shutil.which("netplan")
    configs = sorted(p.name for p in (root / "etc/netplan").glob("*.yaml"))
    if netplan is not None and configs:
        return "netplan", f"netplan is installed and /etc/netplan/{configs[0]} configures the host"
    if (root / "run/NetworkManager").is_dir():
        return "networkmanager", "NetworkManager runs (/run/NetworkManager)"
    if (root / "run/systemd/netif").is_dir():
        return "networkd", "systemd-networkd runs (/run/systemd/netif)"
    return "netplan", "no network stack found running; netplan is the default"
