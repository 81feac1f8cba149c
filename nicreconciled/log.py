"""structlog set-up: the journal under systemd, readable console lines, or JSON lines.

``auto`` (the default) picks the journal when systemd connected our stderr to it, else the
console. JSON lines are for machines (tests, the demo) and stay exactly as they were.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, Literal, TextIO

import structlog

from nicreconciled import journal

Format = Literal["auto", "console", "json", "journal"]
Resolved = Literal["console", "json", "journal"]


def under_systemd(env: Mapping[str, str] | None = None, stream: TextIO | None = None) -> bool:
    """True when STREAM (stderr) is the journal stream systemd gave us.

    JOURNAL_STREAM alone is not enough: it is inherited by children, and a shell started
    from a service keeps it while its stderr is a terminal. systemd.exec(5) says to compare
    its ``device:inode`` with the stream's own.
    """
    value = (env if env is not None else os.environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        expected = (int(dev), int(ino))
        st = os.fstat((stream if stream is not None else sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        return False  # unset or garbled, or a stream without a descriptor (pytest capture)
    return (st.st_dev, st.st_ino) == expected


def resolve(fmt: Format, env: Mapping[str, str] | None = None) -> Resolved:
    if fmt == "auto":
        return "journal" if under_systemd(env) else "console"
    return fmt


def configure(
    fmt: Format = "auto",
    level: int = logging.INFO,
    *,
    journal_socket: str = journal.SOCKET_PATH,
    env: Mapping[str, str] | None = None,
) -> Resolved:
    """Configure structlog for FMT; returns the format chosen (``auto`` resolved)."""
    chosen = resolve(fmt, env)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    factory: Callable[..., Any]
    if chosen == "journal":
        # No timestamp: journald stamps every entry (and the stderr fallback adds its own).
        processors += [structlog.processors.format_exc_info, journal.Renderer()]
        factory = journal.JournalLoggerFactory(journal.Writer(journal_socket))
    else:
        processors.append(
            structlog.processors.TimeStamper(fmt="iso" if chosen == "console" else None, utc=True)
        )
        if chosen == "json":
            processors += [
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ]
        else:
            processors.append(structlog.dev.ConsoleRenderer(colors=False))
        factory = structlog.PrintLoggerFactory(file=sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    return chosen
