"""The real daemon talking to a test-made systemd: sd_notify, the watchdog, the journal."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from nicreconciled import systemd
from tests.conftest import PYTHON, require_tool
from tests.integration.conftest import Stack, nic_spec

pytestmark = pytest.mark.integration

MAC = "0a:00:00:00:00:02"
WATCHDOG_USEC = 400_000
STATUS = re.compile(r"STATUS=\d+ NICs \(\d+ managed\): \d+ converged, \d+ waiting, \d+ failing")


class Listener:
    """A datagram socket the test binds, read continuously by a task (arrival times kept)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.setblocking(False)
        self.got: list[tuple[float, bytes]] = []
        self._task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 1 << 20)
            self.got.append((time.monotonic(), data))

    def start(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sock.close()

    def messages(self, since: int = 0) -> list[str]:
        return [data.decode() for _, data in self.got[since:]]

    async def wait(
        self, match: Callable[[str], bool], what: str, since: int = 0, timeout: float = 15
    ) -> int:
        """Index of the first message from SINCE on that MATCH accepts."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, (_, data) in enumerate(self.got[since:], start=since):
                if match(data.decode(errors="replace")):
                    return i
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {what} within {timeout} s; got {self.messages(since)}")


@pytest.fixture
async def listener(tmp_path: Path) -> AsyncIterator[Callable[[Path], Listener]]:
    made: list[Listener] = []

    def make(path: Path) -> Listener:
        one = Listener(path)
        one.start()
        made.append(one)
        return one

    yield make
    for one in made:
        await one.close()


def start_under_systemd(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *args: str
) -> None:
    """Stack.start with systemd's variables added (Stack.start passes on os.environ)."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        stack.start(*args, polling={"request_timeout": 0.5})
    finally:
        monkeypatch.undo()


def status_of(message: str) -> str | None:
    for line in message.split("\n"):
        if line.startswith("STATUS="):
            return line
    return None


class TestNotify:
    async def test_ready_status_watchdog_reload_and_stop(
        self,
        stack: Stack,
        listener: Callable[[Path], Listener],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        note = listener(stack.tmp / "notify.sock")
        await stack.sim.add_nic(nic_spec(MAC))
        stack.ns.plug("eth1", MAC)
        env = {"NOTIFY_SOCKET": str(note.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        start_under_systemd(stack, monkeypatch, env)

        # READY=1 with the summary, then a STATUS= as the NIC converges.
        i = await note.wait(lambda m: m.startswith("READY=1\n"), "READY=1")
        ready = note.messages()[i]
        assert STATUS.fullmatch(status_of(ready) or ""), ready
        assert status_of(ready) == "STATUS=1 NICs (0 managed): 0 converged, 1 waiting, 0 failing"
        converged = "STATUS=1 NICs (1 managed): 1 converged, 0 waiting, 0 failing"
        await note.wait(lambda m: m == converged, "the converged STATUS=")
        statuses = [m for m in note.messages() if m.startswith("STATUS=")]
        assert len(statuses) == len(set(statuses)), "a STATUS= repeated without a change"
        event = await stack.wait_event("ready")
        assert event["cloud"] == "ec2"
        assert event["watchdog"] == WATCHDOG_USEC / 2 / 1e6
        rendered = await stack.wait_event("rendered", mac=MAC)
        assert rendered["cloud"] == "ec2"

        # WATCHDOG=1 every WATCHDOG_USEC/2 = 0.2 s, each its own datagram.
        t0 = time.monotonic()
        await asyncio.sleep(1.5)
        pets = [t for t, data in note.got if data == b"WATCHDOG=1" and t0 <= t <= t0 + 1.5]
        assert 5 <= len(pets) <= 9, pets
        gaps = [b - a for a, b in itertools.pairwise(pets)]
        assert max(gaps) < WATCHDOG_USEC / 1e6, gaps  # never as long as systemd's limit

        # SIGHUP: RELOADING=1 + MONOTONIC_USEC, then READY=1 once the NIC was polled.
        mark = len(note.got)
        before = systemd.monotonic_usec()
        assert stack.daemon is not None
        stack.daemon.send_signal(signal.SIGHUP)
        i = await note.wait(lambda m: m.startswith("RELOADING=1\n"), "RELOADING=1", since=mark)
        after = systemd.monotonic_usec()
        fields = dict(line.split("=", 1) for line in note.messages()[i].split("\n"))
        assert set(fields) == {"RELOADING", "MONOTONIC_USEC"}
        assert before <= int(fields["MONOTONIC_USEC"]) <= after
        j = await note.wait(lambda m: m.startswith("READY=1\n"), "READY=1 after reload", since=i)
        assert status_of(note.messages()[j]) == converged
        done = await stack.wait_event("resync_done")
        assert done["late"] == []

        # SIGTERM: STOPPING=1, and nothing but watchdog pets after it.
        assert stack.stop() == 0
        k = await note.wait(lambda m: m == "STOPPING=1", "STOPPING=1", since=j)
        assert set(note.messages(k + 1)) <= {"WATCHDOG=1"}

    async def test_after_sighup_ready_waits_for_the_kicked_poll(
        self,
        stack: Stack,
        listener: Callable[[Path], Listener],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        note = listener(stack.tmp / "notify.sock")
        await stack.sim.add_nic(nic_spec(MAC))
        stack.ns.plug("eth1", MAC)
        start_under_systemd(stack, monkeypatch, {"NOTIFY_SOCKET": str(note.path)})
        await note.wait(lambda m: m.startswith("STATUS=1 NICs (1 managed): 1 conv"), "converged")
        await stack.sim.set_fault("hang", 5.0)  # each request now times out (0.5 s)
        mark = len(note.got)
        assert stack.daemon is not None
        stack.daemon.send_signal(signal.SIGHUP)
        i = await note.wait(lambda m: m.startswith("RELOADING=1\n"), "RELOADING=1", since=mark)
        j = await note.wait(lambda m: m.startswith("READY=1\n"), "READY=1", since=i)
        assert note.got[j][0] - note.got[i][0] >= 0.4  # the poll's request timed out first
        failed = await stack.wait_event("fetch_failed", mac=MAC)
        assert failed["cloud"] == "ec2"
        assert (await stack.wait_event("resync_done"))["late"] == []
        assert not any(m.startswith("WATCHDOG") for m in note.messages())  # none asked for


def parse_entry(data: bytes) -> dict[str, str]:
    """journald's native format (NAME=value\\n, or NAME\\n + u64 LE length + data + \\n)."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = end + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", data[end + 1 : end + 9])
            value = data[end + 9 : end + 9 + size]
            pos = end + 10 + size
        fields[name.decode()] = value.decode()
    return fields


class TestJournal:
    async def test_auto_under_systemd_sends_every_event_to_the_journal_with_its_nic(
        self,
        stack: Stack,
        listener: Callable[[Path], Listener],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # The daemon's /run is ours: its /run/systemd/journal/socket is this listener.
        stack.run_dir = stack.tmp / "run"
        journald = listener(stack.run_dir / "systemd" / "journal" / "socket")
        # systemd's proof that stderr is the journal stream: its device and inode.
        stack.log_path.touch()
        st = os.stat(stack.log_path)
        await stack.sim.add_nic(nic_spec(MAC))
        stack.ns.plug("eth1", MAC)
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        # The last --log-format wins over Stack.start's "json".
        start_under_systemd(stack, monkeypatch, env, "--log-format", "auto", "run")

        def entries() -> list[dict[str, str]]:
            return [parse_entry(data) for _, data in journald.got]

        await journald.wait(lambda m: "NICRECONCILED_EVENT=rendered\n" in m, "rendered entry")
        by_event = {e["NICRECONCILED_EVENT"]: e for e in entries()}
        ready = by_event["ready"]
        assert ready["CLOUD"] == "ec2"
        assert ready["PRIORITY"] == "6"
        assert ready["SYSLOG_IDENTIFIER"] == "nicreconciled"
        rendered = by_event["rendered"]
        assert rendered["NIC_MAC"] == MAC
        assert rendered["NIC_IFNAME"] == "eth1"
        assert rendered["CLOUD"] == "ec2"
        assert rendered["FINGERPRINT"]
        assert rendered["MESSAGE"].startswith(f"rendered mac={MAC} ifname=eth1 cloud=ec2 ")
        nic_events = [e for e in entries() if e.get("NIC_MAC") == MAC]
        assert {"nic_tracked", "poll", "accepted", "rendered"} <= {
            e["NICRECONCILED_EVENT"] for e in nic_events
        }
        assert stack.stop() == 0
        await journald.wait(lambda m: "NICRECONCILED_EVENT=stopped\n" in m, "stopped entry")
        assert stack.log_path.read_text() == ""  # nothing fell back to stderr


JOURNALD = Path("/lib/systemd/systemd-journald")

#: In a private mount namespace (the host's /run untouched): a tmpfs /run, a real
#: systemd-journald serving it, events logged as the daemon logs them, then read back.
REAL_JOURNALD = """
set -e
mount -t tmpfs nicreconciled-test /run
mkdir -p /run/systemd/journal /run/log/journal
"$1" >/dev/null 2>&1 &
journald=$!
i=0
while [ ! -S /run/systemd/journal/socket ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
"$2" -c "$3"
journalctl --directory /run/log/journal --sync >/dev/null 2>&1 || sleep 1
journalctl --directory /run/log/journal --no-pager --all -o json SYSLOG_IDENTIFIER=nicreconciled
kill $journald
"""

LOG_EVENTS = """
import structlog
from nicreconciled import log
log.configure("journal")
nic = structlog.get_logger().bind(mac="0a:00:00:00:00:02", ifname="eth1", cloud="ec2")
nic.info("rendered", fingerprint="ab12", flags=["ipv6"])
nic.warning("fetch_failed", error="line one\\nline two")
nic.info("huge", blob="z" * (20 * 1024 * 1024))
"""


def journal_value(value: object) -> str:
    """journalctl -o json writes a value that is not printable text as a list of bytes."""
    if isinstance(value, list):
        return bytes(value).decode()
    assert isinstance(value, str)
    return value


class TestRealJournald:
    def test_systemd_journald_stores_our_fields_and_finds_entries_by_nic(self) -> None:
        require_tool("journalctl")
        require_tool("unshare")
        if not JOURNALD.exists():
            pytest.fail(f"{JOURNALD} missing: install the systemd package", pytrace=False)
        done = subprocess.run(
            [
                *("unshare", "--mount", "--propagation", "private"),
                *("sh", "-c", REAL_JOURNALD, "sh", str(JOURNALD), PYTHON, LOG_EVENTS),
            ],
            capture_output=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        entries = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        by_event = {e["NICRECONCILED_EVENT"]: e for e in entries}
        assert set(by_event) == {"rendered", "fetch_failed", "huge"}
        rendered = by_event["rendered"]
        assert rendered["NIC_MAC"] == "0a:00:00:00:00:02"
        assert rendered["NIC_IFNAME"] == "eth1"
        assert rendered["CLOUD"] == "ec2"
        assert rendered["FINGERPRINT"] == "ab12"
        assert rendered["FLAGS"] == '["ipv6"]'
        assert rendered["PRIORITY"] == "6"
        failed = by_event["fetch_failed"]
        assert failed["PRIORITY"] == "4"
        assert journal_value(failed["ERROR"]) == "line one\nline two"
        assert failed["MESSAGE"].endswith('error="line one\\nline two"')
        # 20 MiB: more than any datagram, so it went by memfd, whole.
        assert len(journal_value(by_event["huge"]["BLOB"])) == 20 * 1024 * 1024
