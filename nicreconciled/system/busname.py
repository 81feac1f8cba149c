"""Notice a network manager being restarted: its D-Bus name goes away and comes back.

A restarted systemd-networkd (``org.freedesktop.network1``) or NetworkManager
(``org.freedesktop.NetworkManager``) may have reset links or reloaded configuration, so the
daemon must re-check every NIC it manages. Both own a name on the system bus, and the bus
broadcasts ``NameOwnerChanged`` when a name's owner goes or comes: one match rule per name
(``arg0``), no polling. Without a reachable bus the daemon runs on without this detection.

jeepney (pure Python, no libdbus) with a small receive loop of our own rather than its
``DBusRouter``: the loop ending is how a lost connection (dbus-daemon restarted) is noticed,
which the router does not expose. After reconnecting, every watched name that has an owner
is reported as appeared: a bus restart restarts or re-registers its services.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from jeepney import DBusErrorResponse, HeaderFields, MatchRule, MessageType, message_bus
from jeepney.io.asyncio import open_dbus_connection
from jeepney.io.common import RouterClosed
from jeepney.wrappers import unwrap_msg

log = structlog.get_logger(__name__)

#: A hung bus must not hang the daemon: each connection attempt and each call gets this long.
CALL_TIMEOUT = 5.0
#: Reconnecting after the bus went away: the first delay, doubled after each failure up to
#: the second.
RETRY_FIRST = 1.0
RETRY_MAX = 30.0

_DBUS = "org.freedesktop.DBus"
#: What bus trouble looks like: no socket or refused (OSError), closed (EOFError, RouterClosed
#: during Hello), an address jeepney cannot use (RuntimeError; KeyError for SESSION without
#: DBUS_SESSION_BUS_ADDRESS), failed authentication or a garbled message (ValueError), an
#: error reply, or no answer in time.
BUS_ERRORS = (
    OSError,
    EOFError,
    RuntimeError,
    KeyError,
    ValueError,
    RouterClosed,
    DBusErrorResponse,
    TimeoutError,
)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _rule(name: str) -> Any:
    rule = MatchRule(type="signal", sender=_DBUS, interface=_DBUS, member="NameOwnerChanged")
    rule.add_arg_condition(0, name)
    return rule


class NameWatch:
    """Follows the owners of bus NAMES on the system bus; calls on_change(name, owned: bool)
    when one goes away (owned=False) or appears (owned=True).

    BUS: "SYSTEM" (DBUS_SYSTEM_BUS_ADDRESS, else the standard socket), "SESSION", or a D-Bus
    address such as "unix:path=/run/dbus/system_bus_socket". An owner handed straight to
    another one (``--replace``) is reported as gone, then appeared.
    """

    def __init__(
        self, names: Sequence[str], on_change: Callable[[str, bool], None], *, bus: str = "SYSTEM"
    ) -> None:
        self.names = tuple(dict.fromkeys(names))
        self._on_change = on_change
        self._bus = bus
        self._conn: Any = None
        self._reader: asyncio.Task[str] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> bool:
        """Connect and subscribe; False (said once in the log) when the bus is unreachable."""
        try:
            await self._connect()
        except BUS_ERRORS as exc:
            log.warning("bus_watch_unavailable", bus=self._bus, error=_describe(exc))
            return False
        self._task = asyncio.create_task(self._supervise(), name="bus-name-watch")
        log.info("bus_watch_started", bus=self._bus, names=list(self.names))
        return True

    async def owned(self, name: str) -> bool:
        """Whether NAME has an owner now; False when the bus cannot tell."""
        try:
            (answer,) = await self._call(message_bus.NameHasOwner(name))
        except BUS_ERRORS as exc:
            log.debug("bus_name_query_failed", name=name, error=_describe(exc))
            return False
        return bool(answer)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        await self._drop()

    async def _connect(self) -> None:
        async with asyncio.timeout(CALL_TIMEOUT):
            conn = await open_dbus_connection(self._bus)
        self._conn, self._pending = conn, {}
        self._reader = asyncio.create_task(self._receive(conn, self._pending))
        try:
            for name in self.names:
                await self._call(message_bus.AddMatch(_rule(name)))
        except BaseException:
            await self._drop()
            raise

    async def _call(self, message: Any) -> tuple[Any, ...]:
        conn, reader, pending = self._conn, self._reader, self._pending
        if conn is None or reader is None or reader.done():
            raise ConnectionError("not connected to the bus")
        serial = next(conn.outgoing_serial)
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending[serial] = reply
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await conn.send(message, serial=serial)
                return tuple(unwrap_msg(await reply))
        finally:
            pending.pop(serial, None)

    async def _receive(self, conn: Any, pending: dict[int, asyncio.Future[Any]]) -> str:
        """Dispatch replies and signals until the connection ends; why it ended."""
        try:
            while True:
                msg = await conn.receive()
                fields = msg.header.fields
                serial = fields.get(HeaderFields.reply_serial)
                if serial is not None:
                    reply = pending.get(serial)
                    if reply is not None and not reply.done():
                        reply.set_result(msg)
                elif (
                    msg.header.message_type is MessageType.signal
                    and fields.get(HeaderFields.member) == "NameOwnerChanged"
                    and fields.get(HeaderFields.sender) == _DBUS
                ):
                    self._changed(*msg.body)
        except Exception as exc:  # any end of the loop is a lost connection: reconnect
            return _describe(exc)
        finally:
            for reply in pending.values():
                if not reply.done():
                    reply.set_exception(ConnectionError("bus connection lost"))

    def _changed(self, name: str, old: str, new: str) -> None:
        if name not in self.names:
            return
        log.info("bus_name_changed", name=name, old_owner=old or None, new_owner=new or None)
        if old:
            self._notify(name, False)
        if new:
            self._notify(name, True)

    def _notify(self, name: str, owned: bool) -> None:
        try:
            self._on_change(name, owned)
        except Exception:
            log.exception("bus_watch_callback_failed", name=name, owned=owned)

    async def _supervise(self) -> None:
        """Wait for the connection to end, then reconnect with backoff and report owners."""
        while self._reader is not None:
            reason = await self._reader
            log.warning("bus_watch_lost", bus=self._bus, error=reason, retry_in=RETRY_FIRST)
            await self._drop()
            delay = RETRY_FIRST
            while True:
                await asyncio.sleep(delay)
                try:
                    await self._connect()
                    break
                except BUS_ERRORS as exc:
                    delay = min(delay * 2, RETRY_MAX)
                    log.debug("bus_watch_retry_failed", error=_describe(exc), retry_in=delay)
            owned = [name for name in self.names if await self.owned(name)]
            log.info("bus_watch_reconnected", bus=self._bus, owned=owned)
            for name in owned:
                self._notify(name, True)

    async def _drop(self) -> None:
        reader, conn = self._reader, self._conn
        self._reader = self._conn = None
        if reader is not None and not reader.done():
            reader.cancel()
            await asyncio.wait([reader])
        if conn is not None:
            with contextlib.suppress(OSError):
                await conn.close()
