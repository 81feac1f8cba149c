"""sd_notify over the NOTIFY_SOCKET datagram socket (abstract ``@`` sockets included).

The messages we send (sd_notify(3)):

- ``READY=1\\nSTATUS=<summary>``: start-up done, and again when a SIGHUP resync finished;
- ``STATUS=<summary>``: one line, sent only when it changed;
- ``WATCHDOG=1``: every WATCHDOG_USEC/2, from the event loop itself;
- ``RELOADING=1\\nMONOTONIC_USEC=<CLOCK_MONOTONIC in µs>``: a SIGHUP resync started;
- ``STOPPING=1``: shutdown started.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


def notify_address(env: Mapping[str, str] | None = None) -> str | bytes | None:
    path = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not path:
        return None
    if path.startswith("@"):
        # Abstract namespace: the leading @ stands for a NUL byte, which must be kept.
        return b"\0" + path[1:].encode()
    return path


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send MESSAGE (e.g. "READY=1\\nSTATUS=...") if systemd asked for it; True if sent."""
    address = notify_address(env)
    if address is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            # Never block the event loop: with the manager's queue full, a blocking send
            # would stall every NIC, every signal and the watchdog itself.
            sock.sendto(message.encode(), socket.MSG_DONTWAIT, address)
        except OSError:  # BlockingIOError included: the message is dropped, not waited for
            return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings, or None when systemd set no watchdog for us.

    Half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises. WATCHDOG_PID, when set, names
    the process the watchdog is meant for: a child that inherited the variables must not pet.
    """
    values = env if env is not None else os.environ
    try:
        usec = int(values.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = values.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != (pid if pid is not None else os.getpid()):
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def status(line: str) -> str:
    """A STATUS= message; systemd shows one line, so line breaks become spaces."""
    return "STATUS=" + " ".join(line.splitlines())


def ready(line: str) -> str:
    return "READY=1\n" + status(line)


def reloading(usec: int | None = None) -> str:
    """RELOADING=1 with the time it started (systemd >= 253 checks it against its request)."""
    return f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec() if usec is None else usec}"


WATCHDOG = "WATCHDOG=1"
STOPPING = "STOPPING=1"
