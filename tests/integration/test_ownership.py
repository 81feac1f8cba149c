"""NICs that are not ours, and status files that stay true: the real daemon in a test netns.

* interfaces.exclude_macs: the excluded ENI is listed by the metadata but never polled and
  never written; ``status --json`` says why; STATUS= and ``status`` print the same line.
* udev ownership: the daemon runs with ``udev.source = "udev"`` and its own /run (a tmp tree
  bind-mounted in its mount namespace) holding the udev database entries the test writes.
  No udevd runs in a test namespace, so no udev events come: the NICs are plugged before the
  start and found by the coldplug scan, which reads the database.
* a symlink planted in place of a status file is replaced (logged once), never followed,
  and never stops the reconciler; a removed NIC's status file goes with it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON
from tests.integration.conftest import Stack, nic_spec
from tests.integration.test_notify import Listener, listener, start_under_systemd, status_of

pytestmark = pytest.mark.integration
__all__ = ["listener"]  # the fixture, imported for this module's tests

ENI = "0a:00:00:00:00:02"
OTHER = "0a:00:00:00:00:03"


def configure(stack: Stack, *, interfaces: Sequence[str] = (), udev: str = "kernel") -> None:
    """Stack.write_config with more [interfaces] keys and another udev.source."""
    original = Stack.write_config

    def write(**overrides: Any) -> Path:
        path = original(stack, **overrides)
        text = path.read_text()
        text = text.replace(
            "[interfaces]\n", "[interfaces]\n" + "".join(f"{x}\n" for x in interfaces)
        )
        text = text.replace('source = "kernel"', f'source = "{udev}"')
        path.write_text(text)
        return path

    stack.write_config = write  # type: ignore[method-assign]


def status_command(stack: Stack, *args: str) -> str:
    done = subprocess.run(
        [PYTHON, "-m", "nicreconciled", "--config", str(stack.tmp / "nicreconciled.toml"),
         "status", *args],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout


def status_rows(stack: Stack) -> dict[str, dict[str, Any]]:
    return {row["mac"]: row for row in json.loads(status_command(stack, "--json"))}


def status_file(stack: Stack, mac: str) -> Path:
    return stack.state / "nics" / f"{mac.replace(':', '')}.json"


async def until(
    predicate: Callable[[], object], stack: Stack, what: str, timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        stack.assert_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{stack.tail()}")
        await asyncio.sleep(0.05)


async def polled_macs(stack: Stack) -> set[str]:
    stats = await stack.sim.stats()
    return {mac for mac in (ENI, OTHER) if any(mac in r["path"] for r in stats["log"])}


class TestExcludedMacs:
    async def test_an_excluded_eni_gets_no_file_and_status_says_why(
        self, stack: Stack, listener: Callable[[Path], Listener], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await stack.sim.add_nic(nic_spec(ENI))
        await stack.sim.add_nic(nic_spec(OTHER, device_number=2))
        stack.ns.plug("eth1", ENI)
        stack.ns.plug("eth2", OTHER)
        configure(stack, interfaces=[f'exclude_macs = ["{OTHER.upper()}"]'])
        note = listener(stack.tmp / "notify.sock")
        start_under_systemd(stack, monkeypatch, {"NOTIFY_SOCKET": str(note.path)})
        await stack.wait_file(ENI, "10.0.11.25")
        line = "2 NICs (1 managed): 2 converged, 0 waiting, 0 failing"
        await note.wait(lambda m: status_of(m) == f"STATUS={line}", "STATUS= with both NICs")
        assert not stack.file_for(OTHER).exists()
        assert await polled_macs(stack) == {ENI}  # the excluded one is never asked about
        rows = status_rows(stack)
        assert (rows[OTHER]["managed"], rows[OTHER]["managed_detail"]) == (
            "excluded",
            "exclude_macs",
        )
        assert (rows[OTHER]["phase"], rows[OTHER]["ifname"]) == ("converged", "eth2")
        assert (rows[ENI]["managed"], rows[ENI]["phase"]) == ("managed", "converged")
        # `status` prints the line STATUS= sent, from the files.
        table = status_command(stack).splitlines()
        assert f"NICs: {line}" in table
        assert any(OTHER in row and "excluded: exclude_macs" in row for row in table)
        # Detached: its status goes with it (it never had a file).
        stack.ns.unplug("eth2")
        await until(lambda: not status_file(stack, OTHER).exists(), stack, "the status to go")
        line = "1 NICs (1 managed): 1 converged, 0 waiting, 0 failing"
        await note.wait(lambda m: status_of(m) == f"STATUS={line}", "STATUS= with one NIC")
        assert stack.stop() == 0


class TestUdevOwnership:
    async def test_nics_udev_gives_to_another_manager_are_left_alone(self, stack: Stack) -> None:
        stack.run_dir = stack.tmp / "run"
        data = stack.run_dir / "udev" / "data"
        data.mkdir(parents=True)
        await stack.sim.add_nic(nic_spec(ENI))
        await stack.sim.add_nic(nic_spec(OTHER, device_number=2))
        stack.ns.plug("eth1", ENI)
        stack.ns.plug("eth2", OTHER)
        # What azure-vm-utils' rules leave for an accelerated networking VF, and a plain NIC.
        (data / f"n{stack.ns.ifindex('eth1')}").write_text("I:1\nE:ID_NET_DRIVER=veth\n")
        (data / f"n{stack.ns.ifindex('eth2')}").write_text(
            "I:1\nE:ID_NET_DRIVER=veth\nE:NM_UNMANAGED=1\nE:ID_NET_MANAGED_BY=unmanaged\n"
        )
        configure(stack, udev="udev")
        stack.start()
        await stack.wait_file(ENI, "10.0.11.25")
        event = await stack.wait_event("nic_not_ours", mac=OTHER)
        assert event["reason"] == "ID_NET_MANAGED_BY=unmanaged"
        await until(lambda: status_file(stack, OTHER).exists(), stack, "its status")
        row = status_rows(stack)[OTHER]
        assert (row["managed"], row["managed_detail"]) == ("foreign", "ID_NET_MANAGED_BY=unmanaged")
        assert not stack.file_for(OTHER).exists()
        assert await polled_macs(stack) == {ENI}
        assert stack.stop() == 0


class TestStatusFiles:
    async def test_a_symlink_planted_as_a_status_file_is_replaced_not_followed(
        self, stack: Stack
    ) -> None:
        await stack.sim.add_nic(nic_spec(ENI))
        stack.ns.plug("eth1", ENI)
        # One left by "an earlier run" as a directory, one planted while running as a symlink.
        status_file(stack, OTHER).mkdir(parents=True)
        stack.start()
        await stack.wait_file(ENI)
        await until(lambda: status_rows(stack).get(ENI, {}).get("phase") == "converged", stack,
                    "convergence")  # fmt: skip
        victim = stack.tmp / "victim"
        victim.write_text("precious\n")
        status_file(stack, ENI).unlink()
        status_file(stack, ENI).symlink_to(victim)
        assert stack.daemon is not None
        stack.daemon.send_signal(signal.SIGHUP)  # a pass: the status is saved again
        event = await stack.wait_event("status_file_replaced", mac=ENI)
        assert event["found"] == "symlink"
        await until(lambda: status_file(stack, ENI).is_file(), stack, "a status file again")
        assert victim.read_text() == "precious\n"
        done = len(stack.events("resync_done"))
        stack.daemon.send_signal(signal.SIGHUP)
        await until(lambda: len(stack.events("resync_done")) > done, stack, "a second resync")
        assert len(stack.events("status_file_replaced", mac=ENI)) == 1
        assert not stack.events("reconciler_crashed")
        assert not stack.events("status_write_failed")
        assert status_rows(stack)[ENI]["phase"] == "converged"
        # The directory of a MAC that is not here: younger than a day, so looked at once;
        # the metadata does not list it, so it is gone, and so is its status.
        await until(lambda: not status_file(stack, OTHER).exists(), stack, "the directory to go")
        assert stack.stop() == 0

    async def test_a_removed_nic_leaves_no_status(self, stack: Stack) -> None:
        await stack.sim.add_nic(nic_spec(ENI))
        await stack.sim.add_nic(nic_spec(OTHER, device_number=2))
        stack.ns.plug("eth1", ENI)
        stack.ns.plug("eth2", OTHER)
        stack.start()
        await stack.wait_file(ENI)
        await stack.wait_file(OTHER)
        await until(lambda: set(status_rows(stack)) == {ENI, OTHER}, stack, "both statuses")
        stack.ns.unplug("eth2")
        await stack.sim.remove_nic(OTHER)
        await stack.wait_gone(OTHER)
        await until(lambda: not status_file(stack, OTHER).exists(), stack, "its status to go")
        assert set(status_rows(stack)) == {ENI}
        assert "1 NICs (1 managed): 1 converged" in status_command(stack)
        assert stack.stop() == 0
