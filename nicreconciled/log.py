"""structlog set-up: the journal under systemd, readable console lines, or JSON lines.

``auto`` (the default) picks the journal when systemd connected our stderr to it, else the
console. JSON lines are for machines (tests, the demo) and stay exactly as they were.

Sinks (``add_sink``; the metrics, metrics.py) get every event the code logs, its debug
events included whatever the level: they count what the log tells, nothing else. With a
sink the filtering by level moves from the logger into the processor chain, after the sinks.
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


Sink = Callable[[Mapping[str, Any]], None]
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "exception": 40,
           "critical": 50}  # fmt: skip


class _Tap:
    """Feeds every event to the sinks, then drops what is below LEVEL."""

    def __init__(self, sinks: list[Sink], level: int) -> None:
        self.sinks, self.level = sinks, level

    def __call__(self, logger: Any, method: str, event: structlog.typing.EventDict) -> Any:
        for sink in self.sinks:
            sink(event)
        if _LEVELS.get(method, 20) < self.level:
            raise structlog.DropEvent
        return event


_sinks: list[Sink] = []
_configured: dict[str, Any] = {}


def add_sink(sink: Sink) -> None:
    """SINK gets every event from now on (loggers bound before keep the old set-up)."""
    _sinks.append(sink)
    if _configured:
        configure(**_configured)


def remove_sink(sink: Sink) -> None:
    if sink in _sinks:
        _sinks.remove(sink)
        if _configured:
            configure(**_configured)


def configure(
    fmt: Format = "auto",
    level: int = logging.INFO,
    *,
    journal_socket: str = journal.SOCKET_PATH,
    env: Mapping[str, str] | None = None,
) -> Resolved:
    """Configure structlog for FMT; returns the format chosen (``auto`` resolved)."""
    _configured.update(fmt=fmt, level=level, journal_socket=journal_socket, env=env)
    chosen = resolve(fmt, env)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if _sinks:
        processors.append(_Tap(_sinks, level))
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
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if _sinks else level),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    return chosen
