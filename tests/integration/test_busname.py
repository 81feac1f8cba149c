"""NameWatch on a private dbus-daemon: a name going and coming, no bus, the bus restarted.

Each test starts its own dbus-daemon with a system-bus-like policy (anyone may own names,
the test's second connection plays networkd), so nothing here touches the machine's bus.
"""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from jeepney import message_bus
from jeepney.io.asyncio import open_dbus_connection as open_async_connection
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from structlog.testing import capture_logs

from nicreconciled.system import busname
from nicreconciled.system.busname import NameWatch
from tests.conftest import require_tool

pytestmark = pytest.mark.integration

NETWORKD = "org.freedesktop.network1"
NM = "org.freedesktop.NetworkManager"

CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


class Bus:
    """A private dbus-daemon listening on PATH (kept across restarts)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.path = workdir / "bus.sock"
        self.address = f"unix:path={self.path}"
        self.process: subprocess.Popen[str] | None = None

    def start(self, socket: Path | None = None) -> None:
        """Start the daemon, listening on SOCKET (default: PATH); returns once it listens."""
        config = self.workdir / "bus.conf"
        config.write_text(CONFIG.format(socket=socket or self.path))
        self.process = subprocess.Popen(
            [
                "dbus-daemon",
                f"--config-file={config}",
                "--nofork",
                "--nopidfile",
                "--print-address",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 5)
        assert ready, "dbus-daemon printed no address within 5 s"
        assert self.process.stdout.readline().startswith("unix:path=")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=5)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None


@pytest.fixture
def bus() -> Iterator[Bus]:
    require_tool("dbus-daemon")
    # A short directory of our own: tmp_path can exceed the 108 bytes of a socket address.
    workdir = Path(tempfile.mkdtemp(prefix="nicr-bus-"))
    started = Bus(workdir)
    started.start()
    try:
        yield started
    finally:
        started.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def claimers() -> Iterator[Callable[[str, str], DBusConnection]]:
    """claim(address, name): a new connection that owns NAME (closed at teardown)."""
    opened: list[DBusConnection] = []

    def claim(address: str, name: str) -> DBusConnection:
        conn = open_dbus_connection(bus=address)
        opened.append(conn)
        reply = conn.send_and_get_reply(message_bus.RequestName(name), timeout=5)
        assert reply.body == (1,), reply  # DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER
        return conn

    yield claim
    for conn in opened:
        conn.close()


async def until(condition: Callable[[], bool], what: str, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.01)


def events_of(logs: list[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


class TestNameWatch:
    async def test_a_name_going_and_coming_is_reported_in_order(
        self,
        bus: Bus,
        claimers: Callable[[str, str], DBusConnection],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        seen: list[tuple[str, bool]] = []
        watch = NameWatch([NETWORKD, NM], lambda name, owned: seen.append((name, owned)))
        try:
            assert await watch.start()
            assert not await watch.owned(NETWORKD)

            first = claimers(bus.address, NETWORKD)
            claimers(bus.address, "org.example.Unwatched")
            await until(lambda: seen == [(NETWORKD, True)], "appeared")
            assert await watch.owned(NETWORKD)

            first.send_and_get_reply(message_bus.ReleaseName(NETWORKD), timeout=5)
            await until(lambda: len(seen) == 2, "released")
            second = claimers(bus.address, NETWORKD)
            await until(lambda: len(seen) == 3, "claimed again")
            second.close()  # the owner exits: its connection closes
            await until(lambda: len(seen) == 4, "owner gone")
            assert seen == [
                (NETWORKD, True),
                (NETWORKD, False),
                (NETWORKD, True),
                (NETWORKD, False),
            ]
            assert not await watch.owned(NETWORKD)
            assert not await watch.owned(NM)
        finally:
            await watch.close()
        await watch.close()  # idempotent

    async def test_without_a_bus_start_says_so_once_and_returns_false(self) -> None:
        missing = f"unix:path={tempfile.gettempdir()}/nicr-no-such-bus-{os.getpid()}.sock"
        seen: list[tuple[str, bool]] = []
        watch = NameWatch([NETWORKD], lambda name, owned: seen.append((name, owned)), bus=missing)
        with capture_logs() as logs:
            assert not await watch.start()
            assert not await watch.owned(NETWORKD)
            await watch.close()
            await watch.close()
        warnings = [entry for entry in logs if entry["log_level"] == "warning"]
        assert [w["event"] for w in warnings] == ["bus_watch_unavailable"]
        assert "FileNotFoundError" in warnings[0]["error"]
        assert seen == []

    async def test_a_restarted_bus_is_reconnected_and_its_owned_names_reported(
        self,
        bus: Bus,
        claimers: Callable[[str, str], DBusConnection],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(busname, "RETRY_FIRST", 0.02)
        monkeypatch.setattr(busname, "RETRY_MAX", 0.1)
        attempts: list[str] = []

        async def counting_open(address: str) -> Any:
            attempts.append(address)
            return await open_async_connection(address)

        monkeypatch.setattr(busname, "open_dbus_connection", counting_open)
        seen: list[tuple[str, bool]] = []
        watch = NameWatch([NETWORKD, NM], lambda n, owned: seen.append((n, owned)), bus=bus.address)
        with capture_logs() as logs:
            try:
                claimers(bus.address, NETWORKD)
                assert await watch.start()
                bus.kill()
                await until(lambda: len(events_of(logs, "bus_watch_lost")) == 1, "loss noticed")
                await until(lambda: len(attempts) >= 4, "retried while the bus is down")

                # The new bus listens elsewhere until NETWORKD is owned there, then takes the
                # old address: the watcher can only learn of the owner by asking after it
                # reconnects (it missed the NameOwnerChanged).
                staging = bus.workdir / "staging.sock"
                bus.start(socket=staging)
                claimers(f"unix:path={staging}", NETWORKD)
                staging.replace(bus.path)
                await until(lambda: seen == [(NETWORKD, True)], "reported after reconnecting")
                [reconnected] = events_of(logs, "bus_watch_reconnected")
                assert reconnected["owned"] == [NETWORKD]

                # The match rules are back: an owner leaving is seen again.
                claimers(bus.address, NM).close()
                await until(lambda: len(seen) == 3, "NM came and went")
                assert seen == [(NETWORKD, True), (NM, True), (NM, False)]
            finally:
                await watch.close()
        lost = [entry for entry in logs if entry["log_level"] == "warning"]
        assert [w["event"] for w in lost] == ["bus_watch_lost"], "one warning for many retries"
