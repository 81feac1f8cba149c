"""sd_notify over the NOTIFY_SOCKET datagram socket (abstract ``@`` sockets included)."""

from __future__ import annotations

import os
import socket


def notify_address(env: dict[str, str] | None = None) -> str | bytes | None:
    path = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not path:
        return None
    if path.startswith("@"):
        # Abstract namespace: the leading @ stands for a NUL byte, which must be kept.
        return b"\0" + path[1:].encode()
    return path


def notify(message: str, env: dict[str, str] | None = None) -> bool:
    """Send MESSAGE (e.g. "READY=1\\nSTATUS=...") if systemd asked for it; True if sent."""
    address = notify_address(env)
    if address is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True
