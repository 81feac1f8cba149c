"""Crash consistency: SIGKILL the real daemon at hundreds of random moments while it renders.

The simulator's metadata for four NICs moves every 25 ms through a cycle of versions whose
renders all differ in length. Three daemons (separate output and state dirs) watch the same
namespace; each is started, poked with SIGHUP every 30 ms once ready (every poke is a full
poll and, the metadata having moved, a render), and SIGKILLed after a random 0-300 ms. After
every kill every file in its output dir must be a complete render of a version the simulator
served, files never disappear, an unchanged file is never rewritten, and temp files carry
names netplan does not read and are swept by the next start.

Starting a Python process costs ~0.9 s of CPU in imports, which would make 200 kills take
minutes on two cores. So most daemons are forked from a "zygote": a process inside the
namespace that imported nicreconciled once and forks a child per start that runs the real
entry point, ``nicreconciled.cli.main([...,"run"])``; the final phase (convergence after the
kills, and the restart that must not rewrite anything) uses ordinary fresh processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import PYTHON
from tests.integration.conftest import Stack, nic_spec
from tests.integration.faultlib import (
    TMP_NAME,
    Daemon,
    netplan_generate,
    record,
    render_spec,
    yaml_name,
)

pytestmark = pytest.mark.integration

NICS = [f"0a:00:00:00:03:0{i}" for i in range(1, 5)]
VERSIONS = 60
STEP = 0.025  # seconds between metadata versions
CYCLE = VERSIONS * STEP
#: How long the versions keep moving (the kills take ~25 s; afterwards the data stands still,
#: which is still a valid, if duller, test). Never re-armed: that would restart the cycle and
#: could bring a version back early, which makes a rewrite of equal content legitimate.
SCHEDULE = 120.0
SLOTS = 3
KILLS_PER_SLOT = 70  # 210 kills in all
MAX_DELAY = 0.3
HUP_EVERY = 0.03
NETPLAN_CHECKS = 4  # sampled states with temp files left, fed to netplan generate

ZYGOTE = r"""
import json, os, sys
import nicreconciled.cli, nicreconciled.wiring, nicreconciled.daemon
import nicreconciled.sources.ec2, nicreconciled.render.netplan, nicreconciled.udev
import aiohttp, pyudev, yaml
while True:
    line = sys.stdin.readline()
    if not line:
        break
    req = json.loads(line)
    if req["op"] == "spawn":
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                log = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                os.dup2(log, 2)
                code = nicreconciled.cli.main(req["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            finally:
                os._exit(code)
        reply = {"pid": pid}
    else:
        _pid, status = os.waitpid(req["pid"], 0)
        reply = {"status": status}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"""


class Zygote:
    def __init__(self, stack: Stack) -> None:
        self.proc = stack.ns.popen(
            [PYTHON, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def _call(self, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"zygote died ({self.proc.poll()})"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def spawn(self, argv: list[str], log: Path) -> int:
        return int(self._call(op="spawn", argv=argv, log=str(log))["pid"])

    def reap(self, pid: int) -> int:
        return int(self._call(op="reap", pid=pid)["status"])


def version(mac: str, v: int) -> dict[str, Any]:
    """Version V of a NIC: the primary IPv4 plus 1..5 secondaries from .(100 + V) on: each
    version renders differently, and the renders differ in size."""
    octet = 10 + int(mac[-1])
    spec = nic_spec(mac, device_number=int(mac[-1]))
    spec["local_ipv4s"] = [f"10.0.{octet}.25"] + [
        f"10.0.{octet}.{100 + v + j}" for j in range(1 + v % 5)
    ]
    return spec


def cycle(mac: str, seconds: float) -> list[list[Any]]:
    """A schedule for local-ipv4s: the next version every STEP s, for SECONDS."""
    return [
        [k * STEP, "\n".join(version(mac, k % VERSIONS)["local_ipv4s"])]
        for k in range(int(seconds / STEP))
    ]


Snapshot = dict[str, tuple[bytes, int, int]]


def snapshot(out: Path) -> tuple[Snapshot, set[str]]:
    """Our files (content, inode, mtime) and the temp names in OUT."""
    files: Snapshot = {}
    temps = set()
    for name in os.listdir(out) if out.exists() else []:
        if name.endswith(".tmp"):
            temps.add(name)
            continue
        path = out / name
        try:
            st = path.lstat()
            files[name] = (path.read_bytes(), st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            continue
    return files, temps


@dataclass
class Tally:
    kills: int = 0
    kills_before_ready: int = 0
    kills_with_temp_left: int = 0
    kills_after_a_render: int = 0
    renders: int = 0
    files_checked: int = 0
    unchanged_files_checked: int = 0
    temps_swept: int = 0
    netplan_states: int = 0
    delays: list[float] = field(default_factory=list)


class Slot:
    """One daemon's output dir, killed over and over."""

    def __init__(self, stack: Stack, index: int, renders: dict[str, dict[bytes, int]]) -> None:
        self.daemon = Daemon(stack, f"slot{index}")
        self.daemon.write_config(
            resync_interval=1,
            polling={"stable_polls": 1, "initial_interval": 0.05, "max_interval": 0.5},
        )
        self.renders = renders
        self.rng = random.Random(index)
        self.ever: set[str] = set()

    def check(self, tally: Tally) -> tuple[Snapshot, set[str]]:
        files, temps = snapshot(self.daemon.out)
        known = {yaml_name(mac): mac for mac in NICS}
        for name in temps:
            assert TMP_NAME.fullmatch(name), f"temp file {name!r} could be read by netplan"
        for name, (data, _ino, _mtime) in files.items():
            assert name in known, f"unexpected file {name}"
            assert data in self.renders[known[name]], f"{name} is not a complete render:\n{data!r}"
            assert yaml.safe_load(data)["network"]["ethernets"]
            tally.files_checked += 1
        missing = self.ever - set(files)
        assert not missing, f"files disappeared after a kill: {missing}"
        self.ever |= set(files)
        return files, temps

    async def kill_cycles(self, zygote: Zygote, count: int, tally: Tally, root: Path) -> None:
        log = self.daemon.log_path
        argv = self.daemon.argv()[3:]  # what follows "python -m nicreconciled"
        for _ in range(count):
            before, temps_before = self.check(tally)
            offset = log.stat().st_size if log.exists() else 0
            pid = zygote.spawn(argv, log)
            spawned = time.monotonic()
            delay = self.rng.uniform(0.0, MAX_DELAY)
            ready = False
            while (left := spawned + delay - time.monotonic()) > 0:
                if not ready:
                    ready = b'"ready"' in read_from(log, offset)
                if ready:
                    os.kill(pid, signal.SIGHUP)
                await asyncio.sleep(min(left, HUP_EVERY))
            os.kill(pid, signal.SIGKILL)
            status = zygote.reap(pid)
            if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
                tail = read_from(log, offset).decode(errors="replace")[-3000:]
                raise AssertionError(f"daemon ended by itself ({status}) before the kill:\n{tail}")
            tally.kills += 1
            tally.delays.append(delay)
            text = read_from(log, offset)
            ready = b'"ready"' in text
            rendered = text.count(b'"rendered"')
            tally.renders += rendered
            tally.kills_before_ready += not ready
            tally.kills_after_a_render += rendered > 0
            after, temps = self.check(tally)
            if temps:
                tally.kills_with_temp_left += 1
            if ready:
                # The start-up sweep ran: temp files of earlier kills are gone.
                assert not temps & temps_before, temps & temps_before
                tally.temps_swept += len(temps_before)
            for name, (data, ino, mtime) in after.items():
                if name not in before or before[name][0] != data:
                    continue
                # Same content: not rewritten, unless the metadata went round the whole cycle
                # of versions since the earlier write (then a rewrite is right).
                if time.time() - before[name][2] / 1e9 < CYCLE - 0.2:
                    assert (ino, mtime) == before[name][1:], f"{name} rewritten unchanged"
                    tally.unchanged_files_checked += 1
            if temps and tally.netplan_states < NETPLAN_CHECKS:
                tally.netplan_states += 1
                await asyncio.to_thread(
                    temps_are_ignored, self.daemon.out, root / f"np{tally.kills}"
                )


def read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""


def temps_are_ignored(out: Path, root: Path) -> None:
    """netplan accepts the state, and the temp files in it change nothing it generates."""
    everything = sorted(out.iterdir())
    with_temps = netplan_generate(everything, root / "with")
    only_yaml = netplan_generate([p for p in everything if p.suffix == ".yaml"], root / "without")
    assert with_temps == only_yaml
    assert with_temps, "netplan generated nothing"


async def test_sigkill_at_random_moments_never_leaves_a_torn_or_missing_file(
    stack: Stack,
) -> None:
    started = time.monotonic()
    renders = {
        mac: {render_spec(version(mac, v)).encode(): v for v in range(VERSIONS)} for mac in NICS
    }
    assert all(len(texts) == VERSIONS for texts in renders.values())  # no two alike
    for i, mac in enumerate(NICS):
        await stack.sim.add_nic(
            {**version(mac, 0), "schedule": {"local-ipv4s": cycle(mac, SCHEDULE)}}
        )
        stack.ns.plug(f"eth{i + 1}", mac)
    zygote = Zygote(stack)
    slots = [Slot(stack, i, renders) for i in range(SLOTS)]
    tally = Tally()

    await asyncio.gather(*(s.kill_cycles(zygote, KILLS_PER_SLOT, tally, stack.tmp) for s in slots))
    killing = time.monotonic() - started

    # The metadata settles; a fresh daemon (a new process, no zygote) converges slot 0's
    # files to it, sweeping the temp files the kills left ...
    final = {mac: version(mac, 7) for mac in NICS}
    for mac in NICS:
        await stack.sim.update_nic(mac, {"local_ipv4s": final[mac]["local_ipv4s"]})
    daemon = slots[0].daemon
    for mac in NICS:
        assert render_spec(final[mac]).encode() in renders[mac]
    daemon.start()
    for mac in NICS:
        await daemon.wait_content(mac, render_spec(final[mac]))
    await converged(daemon)
    files, temps = slots[0].check(tally)
    assert not temps, f"stale temp files survived a complete start: {temps}"
    await asyncio.to_thread(temps_are_ignored, daemon.out, stack.tmp / "np-final")

    # ... and a restart after a SIGKILL rewrites nothing: same inodes, same mtimes.
    daemon.kill()
    offset = daemon.log_path.stat().st_size
    daemon.start()
    await daemon.wait_event("ready")
    await converged(daemon, since=offset)
    daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    await asyncio.sleep(1.0)
    again, _temps = slots[0].check(tally)
    assert {n: v[1:] for n, v in again.items()} == {n: v[1:] for n, v in files.items()}
    assert b'"rendered"' not in read_from(daemon.log_path, offset)
    daemon.assert_alive()

    status_temps = [len(list((s.daemon.state / "nics").glob("*.tmp"))) for s in slots]
    assert tally.kills >= 200
    assert tally.kills_after_a_render >= 50, tally  # the kills did land among renders
    record(
        "crash",
        kills=tally.kills + 1,
        kills_before_ready=tally.kills_before_ready,
        kills_after_a_render=tally.kills_after_a_render,
        kills_with_temp_left=tally.kills_with_temp_left,
        renders_completed=tally.renders,
        files_checked=tally.files_checked,
        unchanged_files_checked=tally.unchanged_files_checked,
        temps_swept=tally.temps_swept,
        netplan_states=tally.netplan_states + 1,
        status_temps_left=status_temps,  # swept at the next start (test below)
        kill_delay_ms=(round(min(tally.delays) * 1000), round(max(tally.delays) * 1000)),
        kill_phase_s=round(killing, 1),
        total_s=round(time.monotonic() - started, 1),
    )


async def converged(daemon: Daemon, since: int = 0) -> None:
    """Every NIC's status says converged, with the rendered fingerprint the current one."""

    def done() -> bool:
        rows = daemon.status()
        return all(
            (row := rows.get(mac)) is not None
            and row["phase"] == "converged"
            and row["fingerprint"] == row["rendered_fingerprint"]
            for mac in NICS
        ) and read_from(daemon.log_path, since).count(b'"accepted"') >= len(NICS)

    await daemon.until(done, 15, "convergence of every NIC")


async def test_status_temp_files_of_a_killed_writer_are_swept_at_start(stack: Stack) -> None:
    daemon = Daemon(stack)
    nics = daemon.state / "nics"
    nics.mkdir(parents=True)
    # What a SIGKILL between creating and renaming a status file leaves behind (fs.py names).
    stale = nics / "0a0000000301.json.0badcafe.tmp"
    stale.write_text('{"mac": "0a:00:')
    spec = version(NICS[0], 1)
    await stack.sim.add_nic(spec)
    stack.ns.plug("eth1", NICS[0])
    daemon.start()
    await daemon.wait_content(NICS[0], render_spec(spec))
    await daemon.until(lambda: NICS[0] in daemon.status(), 10, "the status file")
    assert not stale.exists()
