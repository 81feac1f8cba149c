"""structlog events as journal entries, over journald's native protocol.

Each event becomes one datagram on ``/run/systemd/journal/socket`` holding structured fields
(see https://systemd.io/JOURNAL_NATIVE_PROTOCOL/), so that ``journalctl -u nicreconciled
NIC_MAC=0a:...`` finds every event about one NIC.

Why our own code (the protocol part, ``Writer`` and ``encode``, is about 80 lines) and not a
library (facts checked on Debian 12, Python 3.11):

- PyPI ``systemd-python`` 235 (the systemd project's binding, last release 2023) ships no
  wheel: installing it compiles C against ``libsystemd-dev`` (not installed here, so ``pip``
  fails at ``pkg-config libsystemd``). Debian has it as ``python3-systemd``, but only for the
  system interpreter, not for our virtualenv.
- PyPI ``cysystemd`` 2.0.5 has a manylinux wheel, but it bundles its own libsystemd and six
  more shared libraries (3.5 MiB), and ``sd_journal_sendv`` has the socket path compiled in:
  a test cannot point it at a socket of its own.
- The protocol is small, documented and stable: ``NAME=value\\n`` fields, a length-prefixed
  form for values holding newlines, and a sealed memfd for entries too large for a datagram.

So nothing is added to the dependencies, and the socket path is injectable like every other
path in this project. A test feeds our entries to a real systemd-journald and reads them back
with journalctl (tests/integration/test_notify.py).
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import struct
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SOCKET_PATH = "/run/systemd/journal/socket"
IDENTIFIER = "nicreconciled"

#: structlog level -> syslog priority (PRIORITY=, what journalctl -p filters on).
PRIORITIES = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
    "fatal": 2,
}

#: Event keys operators filter on get stable field names of their own.
WELL_KNOWN = {
    "mac": "NIC_MAC",
    "ifname": "NIC_IFNAME",
    "cloud": "CLOUD",
    "fingerprint": "FINGERPRINT",
}

#: Field names with a meaning to journald, journalctl or us: another event key that would
#: land on one (a key "message", say) is prefixed instead, so it cannot change the entry's
#: text, priority or identity.
RESERVED = frozenset(
    {
        "MESSAGE",
        "MESSAGE_ID",
        "PRIORITY",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
        "ERRNO",
        "INVOCATION_ID",
        "USER_INVOCATION_ID",
        "SYSLOG_FACILITY",
        "SYSLOG_IDENTIFIER",
        "SYSLOG_PID",
        "SYSLOG_TIMESTAMP",
        "SYSLOG_RAW",
        "DOCUMENTATION",
        "TID",
        "UNIT",
        "USER_UNIT",
        "OBJECT_PID",
        "NICRECONCILED_EVENT",
        *WELL_KNOWN.values(),
    }
)

#: journald ignores longer field names.
MAX_NAME = 64
#: Longest value shown in a MESSAGE.
SHOWN_MAX = 500
#: As libsystemd does: a larger send buffer lets larger entries go as a plain datagram.
SNDBUF = 8 * 1024 * 1024

_NOT_NAME = re.compile(r"[^A-Z0-9_]")
_BARE = re.compile(r'^[^\s"=\\]+$')


def field_name(key: str) -> str | None:
    """KEY as a journal field name (A-Z, 0-9, _; not starting with _ or a digit), or None."""
    name = _NOT_NAME.sub("_", key.upper()).lstrip("_")
    if not name:
        return None
    if name[0].isdigit():
        name = "F_" + name
    return name[:MAX_NAME]


def encode_field(name: str, value: str | bytes) -> bytes:
    """One field: ``NAME=value\\n``, or the binary-safe form when the value holds a newline."""
    data = value if isinstance(value, bytes) else value.encode("utf-8", "backslashreplace")
    key = name.encode("ascii")
    if b"\n" in data:
        return key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key + b"=" + data + b"\n"


def encode(fields: Iterable[tuple[str, str | bytes]]) -> bytes:
    return b"".join(encode_field(name, value) for name, value in fields)


def priority(level: str) -> int:
    return PRIORITIES.get(level.lower(), 6)


def _text(value: Any) -> str:
    """A field value: strings as they are, everything else as compact JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=str, separators=(",", ":"))
    except (TypeError, ValueError):  # circular structures, say
        return str(value)


def _shown(value: Any) -> str:
    """A value in the one-line MESSAGE: bare when unambiguous, else quoted (no raw newline).

    Cut at SHOWN_MAX characters: the MESSAGE is for reading, its own field has it all.
    """
    if isinstance(value, str):
        text = value if _BARE.match(value) else json.dumps(value)
    else:
        text = _text(value).replace("\n", "\\n")
    if len(text) > SHOWN_MAX:
        text = f"{text[:SHOWN_MAX]}...({len(text) - SHOWN_MAX} more)"
    return text


def message(event: str, values: Mapping[str, Any]) -> str:
    """The readable line: ``event key=value ...``; a traceback is cut to its last line."""
    parts = [event]
    parts += [f"{key}={_shown(v)}" for key, v in values.items() if key != "exception"]
    exc = values.get("exception")
    if exc:
        lines = str(exc).strip().splitlines()
        parts.append(f"({lines[-1] if lines else 'exception'})")
    return " ".join(parts)


def fields(event_dict: Mapping[str, Any]) -> list[tuple[str, str]]:
    """An event dict (after add_log_level and format_exc_info) as journal fields."""
    values = dict(event_dict)
    event = str(values.pop("event", ""))
    level = str(values.pop("level", "info"))
    values.pop("timestamp", None)  # the journal stamps each entry itself
    out = [
        ("MESSAGE", message(event, values)),
        ("PRIORITY", str(priority(level))),
        ("SYSLOG_IDENTIFIER", IDENTIFIER),
        ("NICRECONCILED_EVENT", event),
    ]
    for key, value in values.items():
        if value is None:
            continue  # absent, not "None": NIC_IFNAME= must not match a detached NIC
        name = WELL_KNOWN.get(key)
        if name is None:
            name = field_name(key)
            if name is None:
                continue
            if name in RESERVED:
                name = ("NICRECONCILED_" + name)[:MAX_NAME]
        out.append((name, _text(value)))
    return out


class Writer:
    """Sends encoded entries to journald; never raises (False: the caller falls back)."""

    def __init__(self, path: str = SOCKET_PATH) -> None:
        self.path = path
        self._sock: socket.socket | None = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # The kernel caps it at net.core.wmem_max; larger entries then go by memfd.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            # Never wait for journald: the event loop must not stall behind it (a timeout
            # would not help either: an unconnected datagram socket polls writable while
            # journald's queue is full, so the wait would spin). EAGAIN means the line goes
            # to stderr instead.
            sock.setblocking(False)
            self._sock = sock
        return self._sock

    def send(self, payload: bytes) -> bool:
        try:
            # Not connected: each datagram finds journald anew, so a journald restart
            # costs nothing.
            self._socket().sendto(payload, self.path)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                return False  # no journald (ENOENT, ECONNREFUSED), or its queue is full (EAGAIN)
        return self._send_memfd(payload)

    def _send_memfd(self, payload: bytes) -> bool:
        """Too large for a datagram: the entry in a sealed memfd, passed with SCM_RIGHTS."""
        try:
            fd = os.memfd_create("nicreconciled-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError:
            return False
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            # journald reads only a sealed memfd: the data cannot change under it.
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            rights = array.array("i", [fd])
            self._socket().sendmsg(
                [], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)], 0, self.path
            )
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@dataclass(frozen=True)
class Entry:
    """What the renderer hands the logger: the datagram, and the line if it cannot go."""

    payload: bytes
    level: str
    message: str
    exception: str | None = None

    def console_line(self) -> str:
        stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        line = f"{stamp} [{self.level:<9}] {self.message}"
        return line + "\n" + self.exception.rstrip("\n") if self.exception else line


class Renderer:
    """Final structlog processor: the event as an Entry for JournalLogger."""

    def __call__(
        self, logger: Any, method_name: str, event_dict: Mapping[str, Any]
    ) -> tuple[tuple[Entry], dict[str, Any]]:
        out = fields(event_dict)
        exc = event_dict.get("exception")
        entry = Entry(
            payload=encode(out),
            level=str(event_dict.get("level", method_name)),
            message=out[0][1],
            exception=str(exc) if exc else None,
        )
        return (entry,), {}


class JournalLogger:
    """The structlog logger for journal output: stderr lines while journald is unreachable."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def msg(self, entry: Entry) -> None:
        if not self.writer.send(entry.payload):
            # Looked up at each call: pytest and the demo swap sys.stderr.
            print(entry.console_line(), file=sys.stderr, flush=True)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class JournalLoggerFactory:
    """One writer (one socket) shared by every logger structlog asks for."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def __call__(self, *args: Any) -> JournalLogger:
        return JournalLogger(self.writer)
