"""The file system says no (issue 19): output_dir or state_dir read-only, full, or a file in
the way where a directory should be, on real small tmpfs mounts.

Each daemon runs in a private mount namespace of its own (``unshare --mount --propagation
private``) where a script mounts two 256 KiB tmpfs and then execs the daemon: one holds
output_dir, the other state_dir. The host's mounts are never touched, and the mounts vanish
with the daemon (the test's network namespace kills it, also when a test fails). The test sees
and changes those directories through ``/proc/<pid>/root`` and ``nsenter -m``.

For each fault: one clear error event in the JSON log, naming the path (a status write
failure once, however often it is retried; a write failure at each backed-off retry, as
test_faults pins); the error where an operator looks (``nicreconciled status`` for
output_dir; ``STATUS=`` and the log for state_dir, where the status files live); the daemon
alive and answering SIGHUP with READY=1; the previous file byte-identical; no temp file left
behind; and the file written within one retry once the cause is removed (the seconds are
printed).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from nicreconciled.status import NicStatus, StatusStore, StatusWriteError
from nicreconciled.system import fs
from tests.conftest import PYTHON, require_tool
from tests.integration.conftest import Stack, nic_spec
from tests.integration.faultlib import RESYNC, TMP_NAME, Daemon, render_spec, yaml_name
from tests.integration.test_notify import Listener

pytestmark = pytest.mark.integration

MAC = "0a:00:00:00:00:02"
STATUS_NAME = MAC.replace(":", "") + ".json"
#: One retry after the cause is gone: the retry interval is capped at the resync interval
#: (2 s, +-20 % for an idle NIC's resync), plus slack for a slow shared machine.
ONE_RETRY = RESYNC * 1.2 + 1.5
IN_THE_WAY = b"an operator's file, in the way\n"

#: Two small tmpfs in the daemon's own mount namespace, then the daemon.
MOUNTS = r"""
set -e
mount -t tmpfs -o size=256k,mode=0755 nicreconciled-test-out "$1"
mount -t tmpfs -o size=256k,mode=0755 nicreconciled-test-state "$2"
"""


class Mounted(Daemon):
    """A faultlib.Daemon (with debug events: one per pass) whose output_dir and state_dir
    live on tmpfs in its own mount namespace: output_dir = o/out, state_dir = s/state."""

    @property
    def out_mount(self) -> Path:
        return self.home / "o"

    @property
    def state_mount(self) -> Path:
        return self.home / "s"

    @property
    def out(self) -> Path:
        return self.out_mount / "out"

    @property
    def state(self) -> Path:
        return self.state_mount / "state"

    @property
    def nics(self) -> Path:
        return self.state / "nics"

    def argv(self, command: str = "run") -> list[str]:
        argv = super().argv(command)
        return [*argv[:-1], "--verbose", argv[-1]]

    def view(self, path: Path) -> Path:
        """PATH as the daemon sees it (through its mount namespace)."""
        return Path(f"/proc/{self.pid}/root") / path.relative_to("/")

    def file(self, mac: str) -> Path:
        return self.view(self.out / yaml_name(mac))

    def status_file(self) -> Path:
        return self.view(self.nics / STATUS_NAME)

    def status_row(self) -> dict[str, Any]:
        try:
            row: dict[str, Any] = json.loads(self.status_file().read_text())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return {}
        return row

    def launch(self, notify: Listener, setup: str = "") -> None:
        """Start on fresh tmpfs; SETUP (shell, $1 = output mount, $2 = state mount) runs
        after the mounts, before the daemon."""
        self.out_mount.mkdir(parents=True)
        self.state_mount.mkdir(parents=True)
        script = MOUNTS + setup + '\nshift 2\nexec "$@"\n'
        wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
        wrapper += [str(self.out_mount), str(self.state_mount)]
        self.start(wrapper=wrapper, env={"NOTIFY_SOCKET": str(notify.path)})

    def inside(self, script: str, *args: str) -> None:
        """A shell SCRIPT in the daemon's mount namespace ($1... = ARGS)."""
        done = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "sh", "-c", script, "sh", *args],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert done.returncode == 0, done.stderr

    def remount(self, mount: Path, mode: str) -> None:
        # Read-only fails (EBUSY) while a file there is open for writing: retried.
        script = 'for i in 1 2 3 4 5 6 7 8 9 10; do mount -o "remount,$2" "$1" && exit 0; '
        script += "sleep 0.1; done; exit 1"
        self.inside(script, str(mount), mode)

    def temps(self, *directories: Path) -> list[str]:
        """Temp files (``*.tmp``) in output_dir, state_dir, state_dir/nics and DIRECTORIES."""
        found = []
        for directory in (self.out, self.state, self.nics, *directories):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                found += [n for n in os.listdir(self.view(directory)) if n.endswith(".tmp")]
        return found

    def status_cli(self, *args: str) -> str:
        """``nicreconciled status`` in the daemon's mount namespace."""
        done = subprocess.run(
            [
                *("nsenter", "-t", str(self.pid), "-m"),
                *(PYTHON, "-m", "nicreconciled", "--config", str(self.cfg_path), "status", *args),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def passes_after(self, since: float) -> int:
        """The NIC's passes (one poll or probe event each) logged after SINCE."""
        return sum(
            1
            for e in self.events()
            if e.get("mac") == MAC
            and e.get("event") in ("poll", "probe")
            and e["timestamp"] > since
        )

    async def wait_passes(self, since: float, count: int) -> None:
        await self.until(lambda: self.passes_after(since) >= count, 15, f"{count} passes", step=0.1)

    async def sighup(self, notify: Listener) -> str:
        """SIGHUP; the STATUS= of the READY=1 that ends the resync it starts."""
        since = len(notify.got)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        i = await notify.wait(lambda m: m.startswith("RELOADING=1"), "RELOADING=1", since)
        i = await notify.wait(lambda m: m.startswith("READY=1"), "READY=1 after SIGHUP", i)
        return status_line(notify.messages(i)[0])


def status_line(message: str) -> str:
    lines = [x for x in message.split("\n") if x.startswith("STATUS=")]
    assert lines, message
    return lines[0].removeprefix("STATUS=")


def last_status(notify: Listener) -> str:
    lines = [x for m in notify.messages() for x in m.split("\n") if x.startswith("STATUS=")]
    assert lines, notify.messages()
    return lines[-1].removeprefix("STATUS=")


@pytest.fixture
async def notify(tmp_path: Path) -> AsyncIterator[Listener]:
    """The daemon's NOTIFY_SOCKET, read all the time (what systemd's STATUS= would show)."""
    one = Listener(tmp_path / "notify.sock")
    one.start()
    yield one
    await one.close()


V1 = nic_spec(MAC, 1)
V2 = nic_spec(MAC, 1, local_ipv4s=["10.0.11.25", "10.0.11.26"])


async def plugged(stack: Stack) -> None:
    require_tool("unshare")
    require_tool("nsenter")
    await stack.sim.add_nic(V1)
    stack.ns.plug("eth1", MAC)


async def converged(stack: Stack, notify: Listener) -> Mounted:
    """The daemon on its tmpfs, the NIC's file written and its status converged."""
    await plugged(stack)
    daemon = Mounted(stack)
    daemon.launch(notify)
    await daemon.wait_content(MAC, render_spec(V1), timeout=30)
    await daemon.until(lambda: daemon.status_row().get("phase") == "converged", 15, "status")
    return daemon


async def change(stack: Stack, daemon: Mounted, notify: Listener) -> float:
    """Change the NIC's metadata and SIGHUP (answered by READY=1); the log time before."""
    since = time.time()
    await stack.sim.update_nic(MAC, {"local_ipv4s": V2["local_ipv4s"]})
    await daemon.sighup(notify)
    return since


async def recovered(what: str, wait: Callable[[], Any], fixed_at: float) -> float:
    """Seconds from the fix (FIXED_AT) until WAIT returned; printed for the report."""
    await wait()
    took = time.monotonic() - fixed_at
    print(f"\n{what}: written {took:.2f} s after the fix")
    assert took <= ONE_RETRY, f"{what}: {took:.2f} s after the fix"
    return took


def fill(path: Path) -> None:
    """Write PATH until its file system is full (ENOSPC)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            try:
                os.write(fd, b"\0" * 16384)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return
    finally:
        os.close(fd)


class TestOutputDir:
    async def test_read_only(self, stack: Stack, notify: Listener) -> None:
        daemon = await converged(stack, notify)
        path = daemon.file(MAC)
        before = path.read_bytes()
        daemon.remount(daemon.out_mount, "ro")
        since = await change(stack, daemon, notify)
        first = await daemon.wait_event("write_failed", mac=MAC)
        assert first["error"] == f"{daemon.out / yaml_name(MAC)}: Read-only file system"
        await daemon.wait_passes(since, 4)  # the failed pass and three retries
        daemon.assert_alive()
        assert path.read_bytes() == before
        assert daemon.temps() == []
        failures = daemon.events("write_failed", mac=MAC)
        times = [e["timestamp"] for e in failures]
        gaps = [round(b - a, 2) for a, b in itertools.pairwise(times)]
        print(f"\nwrite_failed: {len(failures)} in {times[-1] - times[0]:.2f} s, gaps {gaps}")
        # Once per retry, and the retries back off (doubling, capped at the resync).
        assert len(failures) <= daemon.passes_after(since)
        assert gaps == sorted(gaps) or gaps[-1] >= RESYNC * 0.8, gaps
        rows = json.loads(daemon.status_cli("--json"))
        assert rows[0]["phase"] == "failing"
        assert rows[0]["last_error"] == first["error"]
        text = daemon.status_cli()
        assert "1 failing" in text
        assert f"error: {first['error']}" in text
        assert last_status(notify).endswith("0 converged, 0 waiting, 1 failing")
        daemon.remount(daemon.out_mount, "rw")
        fixed = time.monotonic()
        await recovered(
            "output_dir rw again", lambda: daemon.wait_content(MAC, render_spec(V2)), fixed
        )
        await daemon.until(lambda: "1 converged" in last_status(notify), 5, "STATUS= converged")
        assert daemon.temps() == []
        assert daemon.stop() == 0

    async def test_a_regular_file_in_its_place(self, stack: Stack, notify: Listener) -> None:
        daemon = await converged(stack, notify)
        before = daemon.file(MAC).read_bytes()
        # The operator moves output_dir aside and a file takes its name.
        daemon.inside(
            'mv "$1" "$1.aside" && printf %s "$2" > "$1"', str(daemon.out), IN_THE_WAY.decode()
        )
        since = await change(stack, daemon, notify)
        first = await daemon.wait_event("write_failed", mac=MAC)
        assert first["error"] == f"{daemon.out}: Not a directory"
        await daemon.wait_passes(since, 3)
        daemon.assert_alive()
        assert daemon.view(daemon.out).read_bytes() == IN_THE_WAY  # never removed
        aside = daemon.view(daemon.out_mount / "out.aside")
        assert (aside / yaml_name(MAC)).read_bytes() == before
        assert daemon.temps(daemon.out_mount / "out.aside") == []
        assert len(daemon.events("write_failed", mac=MAC)) <= daemon.passes_after(since)
        rows = json.loads(daemon.status_cli("--json"))
        assert (rows[0]["phase"], rows[0]["last_error"]) == ("failing", first["error"])
        assert last_status(notify).endswith("1 failing")
        daemon.inside('rm "$1"', str(daemon.out))
        fixed = time.monotonic()
        await recovered(
            "file in place of output_dir removed",
            lambda: daemon.wait_content(MAC, render_spec(V2)),
            fixed,
        )
        assert daemon.temps() == []
        assert daemon.stop() == 0


def ro(daemon: Mounted) -> None:
    daemon.remount(daemon.state_mount, "ro")


def rw(daemon: Mounted) -> None:
    daemon.remount(daemon.state_mount, "rw")


def full(daemon: Mounted) -> None:
    fill(daemon.view(daemon.state_mount / "filler"))


def space(daemon: Mounted) -> None:
    daemon.view(daemon.state_mount / "filler").unlink()


def nics_file(daemon: Mounted) -> None:
    script = 'mv "$1" "$1.aside" && printf %s "$2" > "$1"'
    daemon.inside(script, str(daemon.nics), IN_THE_WAY.decode())


def nics_file_gone(daemon: Mounted) -> None:
    assert daemon.view(daemon.nics).read_bytes() == IN_THE_WAY  # never removed
    daemon.inside('rm "$1"', str(daemon.nics))


STATE_FAULTS: dict[str, tuple[Callable[[Mounted], None], Callable[[Mounted], None], str]] = {
    # fault, its fix, the error (the path: {file} = the NIC's status file, {nics} = its dir)
    "read-only": (ro, rw, "{file}: Read-only file system"),
    "full": (full, space, "{file}: No space left on device"),
    "nics-is-a-file": (nics_file, nics_file_gone, "{nics}: Not a directory"),
}


class TestStateDir:
    @pytest.mark.parametrize("fault", list(STATE_FAULTS))
    async def test_status_not_saved_is_said_once_and_in_status_line(
        self, stack: Stack, notify: Listener, fault: str
    ) -> None:
        break_it, fix_it, error = STATE_FAULTS[fault]
        daemon = await converged(stack, notify)
        before = daemon.status_file().read_bytes()
        break_it(daemon)
        since = await change(stack, daemon, notify)
        # The daemon goes on with its job: the new file is written.
        await daemon.wait_content(MAC, render_spec(V2))
        first = await daemon.wait_event("status_write_failed", mac=MAC)
        expected = error.format(file=daemon.nics / STATUS_NAME, nics=daemon.nics)
        assert first["error"] == expected
        # Retried at every pass (two more forced by SIGHUP), said once.
        for _ in range(2):
            line = await daemon.sighup(notify)
            assert line.endswith(f"; status not saved: {expected}"), line
        await daemon.wait_passes(since, 3)
        daemon.assert_alive()
        assert len(daemon.events("status_write_failed")) == 1
        assert daemon.temps(daemon.state / "nics.aside") == []
        previous = daemon.view(daemon.state / "nics.aside" / STATUS_NAME)
        if fault == "nics-is-a-file":
            assert previous.read_bytes() == before
        else:
            assert daemon.status_file().read_bytes() == before  # what `status` shows
        fix_it(daemon)
        fixed = time.monotonic()
        fingerprint = json.loads(before)["rendered_fingerprint"]

        def saved() -> bool:
            row = daemon.status_row()
            return row.get("phase") == "converged" and row["rendered_fingerprint"] != fingerprint

        await recovered(
            f"state_dir {fault} fixed", lambda: daemon.until(saved, 10, "status"), fixed
        )
        await daemon.until(lambda: "not saved" not in last_status(notify), 5, "STATUS= clean")
        assert last_status(notify) == "1 NICs (1 managed): 1 converged, 0 waiting, 0 failing"
        await daemon.wait_event("status_write_recovered", mac=MAC)
        assert len(daemon.events("status_write_failed")) == 1
        assert daemon.temps(daemon.state / "nics.aside") == []
        assert daemon.stop() == 0

    async def test_read_only_from_the_start(self, stack: Stack, notify: Listener) -> None:
        """A previous run's files, a killed writer's temp files in both directories, and
        state_dir read-only when the daemon starts: output_dir is still swept, the status
        trouble is reported as such, and once writable the daemon's phase is saved too."""
        await plugged(stack)
        daemon = Mounted(stack)
        out_tmp = f"{yaml_name(MAC)}.0123abcd.tmp"
        state_tmp = f"{STATUS_NAME}.0123abcd.tmp"
        assert TMP_NAME.fullmatch(out_tmp)
        stale_daemon = '{"phase": "detecting", "detail": "a previous run", "cloud": null}\n'
        setup = f"""
mkdir -p "$1/out" "$2/state/nics"
echo torn > "$1/out/{out_tmp}"
echo torn > "$2/state/nics/{state_tmp}"
printf '%s' '{stale_daemon}' > "$2/state/daemon.json"
mount -o remount,ro "$2"
"""
        daemon.launch(notify, setup)
        await daemon.wait_content(MAC, render_spec(V1), timeout=30)
        await daemon.wait_event("status_write_failed", mac=MAC)
        sweep = await daemon.wait_event("status_sweep_failed")
        assert sweep["path"] == str(daemon.nics)
        assert "Read-only file system" in sweep["error"]
        assert not daemon.events("output_dir_unreadable")
        assert out_tmp not in daemon.temps()  # output_dir was swept all the same
        phase = daemon.events("status_write_failed", mac=None)
        assert [e["error"] for e in phase] == [f"{daemon.state}/daemon.json: Read-only file system"]
        line = await daemon.sighup(notify)
        assert "; status not saved: " in line, line
        assert daemon.view(daemon.state / "daemon.json").read_text() == stale_daemon
        rw(daemon)
        fixed = time.monotonic()

        def saved() -> bool:
            return daemon.status_row().get("phase") == "converged" and "running" in (
                daemon.view(daemon.state / "daemon.json").read_text()
            )

        await recovered(
            "state_dir rw again (from the start)", lambda: daemon.until(saved, 10, "status"), fixed
        )
        await daemon.until(lambda: "not saved" not in last_status(notify), 5, "STATUS= clean")
        assert len(daemon.events("status_write_failed")) == 2  # the NIC's and the daemon's
        assert "running: cloud ec2" in daemon.status_cli()
        # Only the killed writer's temp in state_dir is left (swept at the next start).
        assert daemon.temps() == [state_tmp]
        assert daemon.stop() == 0


class TestMessages:
    """The error texts, without a daemon."""

    def test_a_file_in_place_of_the_directory_is_not_a_directory(self, tmp_path: Path) -> None:
        (tmp_path / "out").write_bytes(IN_THE_WAY)
        with pytest.raises(NotADirectoryError) as caught:
            fs.write_if_changed(tmp_path / "out", "f.yaml", "x\n")
        text = fs.describe(caught.value, tmp_path / "out", "f.yaml")
        assert text == f"{tmp_path / 'out'}: Not a directory"
        assert (tmp_path / "out").read_bytes() == IN_THE_WAY

    def test_a_status_write_error_names_the_path(self, tmp_path: Path) -> None:
        (tmp_path / "state").mkdir()
        (tmp_path / "state" / "nics").write_bytes(IN_THE_WAY)
        store = StatusStore(tmp_path / "state")
        with pytest.raises(StatusWriteError) as caught:
            store.save(NicStatus(mac=MAC))
        assert str(caught.value) == f"{tmp_path / 'state' / 'nics'}: Not a directory"
        assert caught.value.errno == errno.ENOTDIR
        assert store.sweep() == 0
        assert (tmp_path / "state" / "nics").read_bytes() == IN_THE_WAY
