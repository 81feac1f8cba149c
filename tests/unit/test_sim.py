"""The simulator: IMDSv2 rules in-process, and the control API of `python -m nicreconciled.sim`
over a real unix socket."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import nicreconciled
from nicreconciled.errors import FetchError
from nicreconciled.sim.client import SimClient, SimControlError
from nicreconciled.sim.imds import LISTED_404, ImdsSim
from nicreconciled.sources.ec2 import Ec2Config, Ec2Source
from nicreconciled.sources.ec2_parse import mac_dir
from nicreconciled.sources.http import Answer, HttpClient

PRIMARY = "0a:00:00:00:00:01"
MAC = "0a:00:00:00:00:02"
REPO = Path(nicreconciled.__file__).resolve().parent.parent


def spec(mac: str = MAC, device_number: int = 1, **extra: object) -> dict[str, object]:
    return {
        "mac": mac,
        "device_number": device_number,
        "local_ipv4s": [f"10.0.{10 + device_number}.25"],
        "subnet_ipv4_cidr": f"10.0.{10 + device_number}.0/24",
    } | extra


# --- in-process: the IMDS side ------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestLookup:
    def test_directories_end_subdirectories_with_a_slash(self) -> None:
        sim = ImdsSim()
        sim.add_nic(spec(PRIMARY, 0))
        sim.add_nic(spec())
        assert sim.lookup("meta-data/network/interfaces/macs/") == f"{PRIMARY}/\n{MAC}/"
        assert sim.lookup("meta-data/network/") == "interfaces/"
        assert sim.lookup("meta-data/mac") == PRIMARY
        assert sim.lookup("meta-data/instance-id") == "i-0123456789abcdef0"

    def test_mac_directory_lists_present_keys(self) -> None:
        sim = ImdsSim()
        sim.add_nic(spec(network_card=None, ipv6s=[]))
        listing = sim.lookup(mac_dir(MAC))
        assert listing is not None
        names = listing.split("\n")
        assert "network-card" not in names
        assert "ipv6s" not in names
        assert {"device-number", "local-ipv4s", "mac", "subnet-id", "vpc-id"} <= set(names)
        assert sim.lookup(mac_dir(MAC) + "local-ipv4s") == "10.0.11.25"
        assert sim.lookup(mac_dir(MAC) + "ipv6s") is None

    def test_schedule_changes_keys_over_time(self) -> None:
        clock = FakeClock()
        sim = ImdsSim(clock=clock)
        sim.add_nic(
            spec(
                listed_404=["ipv6s"],
                schedule={"ipv6s": [[2, "2001:db8::5"]], "device-number": [[0, "0"], [1, "3"]]},
            )
        )
        key = mac_dir(MAC) + "ipv6s"
        listing = sim.lookup(mac_dir(MAC))
        assert listing is not None
        assert "ipv6s" in listing.split("\n")
        assert sim.lookup(key) is None  # listed, but 404
        assert sim.lookup(mac_dir(MAC) + "device-number") == "0"
        clock.now += 1
        assert sim.lookup(mac_dir(MAC) + "device-number") == "3"
        clock.now += 1
        assert sim.lookup(key) == "2001:db8::5"

    def test_null_in_a_schedule_removes_the_key(self) -> None:
        clock = FakeClock()
        sim = ImdsSim(clock=clock)
        sim.add_nic(spec(schedule={"local-ipv4s": [[1, None]]}))
        clock.now += 1
        listing = sim.lookup(mac_dir(MAC))
        assert listing is not None
        assert "local-ipv4s" not in listing.split("\n")

    def test_patched_schedule_counts_from_the_patch(self) -> None:
        clock = FakeClock()
        sim = ImdsSim(clock=clock)
        sim.add_nic(spec())
        clock.now += 50
        sim.update_nic(MAC, {"ipv6s": [], "schedule": {"ipv6s": [[5, "2001:db8::7"]]}})
        clock.now += 4
        assert sim.lookup(mac_dir(MAC) + "ipv6s") is None
        clock.now += 1
        assert sim.lookup(mac_dir(MAC) + "ipv6s") == "2001:db8::7"

    def test_patching_a_field_cancels_its_pending_schedule(self) -> None:
        clock = FakeClock()
        sim = ImdsSim(clock=clock)
        sim.add_nic(spec(schedule={"local-ipv4s": [[10, "10.0.11.99"]]}))
        sim.update_nic(MAC, {"local_ipv4s": ["10.0.11.26"]})
        clock.now += 20
        assert sim.lookup(mac_dir(MAC) + "local-ipv4s") == "10.0.11.26"

    def test_raw_overrides_any_path(self) -> None:
        sim = ImdsSim()
        sim.add_nic(spec())
        sim.set_raw("/latest/meta-data/mac", "garbage\x00")
        sim.set_raw(mac_dir(MAC) + "device-number", LISTED_404)
        assert sim.lookup("meta-data/mac") == "garbage\x00"
        assert sim.lookup(mac_dir(MAC) + "device-number") is None
        sim.set_raw("meta-data/mac", None)
        assert sim.lookup("meta-data/mac") == MAC

    def test_invalid_nics_and_faults_are_refused(self) -> None:
        sim = ImdsSim()
        sim.add_nic(spec())
        with pytest.raises(ValueError, match="exists"):
            sim.add_nic(spec())
        with pytest.raises(ValueError, match="extra"):
            sim.add_nic({"mac": PRIMARY, "colour": "blue"})
        with pytest.raises(ValueError, match="unknown fault"):
            sim.set_fault("flood")
        with pytest.raises(KeyError):
            sim.update_nic(PRIMARY, {"device_number": 2})

    def test_faults_expire(self) -> None:
        clock = FakeClock()
        sim = ImdsSim(clock=clock)
        sim.set_fault("5xx", 2.0)
        assert sim.active_fault() == "5xx"
        clock.now += 2
        assert sim.active_fault() == "none"


class TestTokenRules:
    async def test_imdsv2_token_rules(self, sim: ImdsSim, http: HttpClient) -> None:
        url = f"{sim.url}/latest/"
        ttl = "X-aws-ec2-metadata-token-ttl-seconds"
        assert (await http.request("PUT", url + "api/token")).status == 400
        for bad in ("0", "21601", "-5", "abc"):
            assert (await http.request("PUT", url + "api/token", {ttl: bad})).status == 400
        answer = await http.request("PUT", url + "api/token", {ttl: "21600"})
        assert answer.status == 200
        token = answer.body
        get = "meta-data/instance-id"
        assert (await http.request("GET", url + get)).status == 401
        bogus = {"X-aws-ec2-metadata-token": "forged"}
        assert (await http.request("GET", url + get, bogus)).status == 401
        good = {"X-aws-ec2-metadata-token": token}
        assert await http.request("GET", url + get, good) == Answer(200, "i-0123456789abcdef0")
        assert (await http.request("GET", url + "meta-data/nope", good)).status == 404
        sim.set_fault("invalidate-tokens")
        assert (await http.request("GET", url + get, good)).status == 401
        assert sim.by_status[400] == 5

    async def test_expired_token_is_refused(self, http: HttpClient) -> None:
        clock = FakeClock()
        sim = ImdsSim(clock=clock)
        url = await sim.start()
        try:
            answer = await http.request(
                "PUT", f"{url}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "5"}
            )
            headers = {"X-aws-ec2-metadata-token": answer.body}
            get = f"{url}/latest/meta-data/instance-id"
            assert (await http.request("GET", get, headers)).status == 200
            clock.now += 5
            assert (await http.request("GET", get, headers)).status == 401
        finally:
            await sim.stop()


# --- out of process: the control API over a unix socket -----------------------------------


@dataclass
class SimProcess:
    proc: subprocess.Popen[str]
    control: Path
    client: SimClient
    imds: str = ""


@pytest.fixture
def sim_process() -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """`python -m nicreconciled.sim` on 127.0.0.1:0, killed in the finalizer."""
    # A short directory: unix socket paths are limited to 107 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="nicr-sim-"))
    control = workdir / "ctl.sock"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    argv = ["--listen", "127.0.0.1:0", "--control", str(control)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nicreconciled.sim", *argv],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        yield proc, control
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def sim_proc(
    sim_process: tuple[subprocess.Popen[str], Path],
) -> AsyncIterator[SimProcess]:
    proc, control = sim_process
    client = SimClient(control)
    try:
        ready = await client.wait_ready(15)
        assert ready["pid"] == proc.pid
        yield SimProcess(proc, control, client, ready["imds"])
    finally:
        await client.close()


@pytest.fixture
async def ec2(sim_proc: SimProcess) -> AsyncIterator[Ec2Source]:
    source = Ec2Source(
        Ec2Config(endpoint=sim_proc.imds, fallback_endpoint=""),
        HttpClient(timeout=0.5),
        listing_ttl=0,  # every call asks: these tests change the listing between calls
    )
    yield source
    await source.close()


class TestControlApi:
    async def test_ready_line_and_socket_mode(self, sim_proc: SimProcess) -> None:
        assert sim_proc.proc.stdout is not None
        line = json.loads(sim_proc.proc.stdout.readline())
        assert line == {"imds": sim_proc.imds, "control": str(sim_proc.control)}
        assert sim_proc.control.stat().st_mode & 0o777 == 0o600

    async def test_nic_lifecycle(self, sim_proc: SimProcess, ec2: Ec2Source) -> None:
        sim = sim_proc.client
        added = await sim.add_nic(spec(PRIMARY, 0))
        assert added["mac"] == PRIMARY
        await sim.add_nic(spec(network_card=1))
        assert [n["mac"] for n in await sim.list_nics()] == [PRIMARY, MAC]
        assert await ec2.list_macs() == {PRIMARY, MAC}
        state = (await ec2.fetch(MAC)).state
        assert state is not None
        assert state.route_table == 10100 + state.device_number

        updated = await sim.update_nic(MAC, {"local_ipv4s": ["10.0.11.25", "10.0.11.26"]})
        assert updated["local_ipv4s"] == ["10.0.11.25", "10.0.11.26"]
        state = (await ec2.fetch(MAC)).state
        assert state is not None
        assert [str(a) for a in state.ipv4_addresses] == ["10.0.11.25", "10.0.11.26"]

        await sim.remove_nic(MAC)
        gone = await ec2.fetch(MAC)
        assert [f.kind for f in gone.flags] == ["not-listed"]

    async def test_patched_schedule_is_relative_to_now(
        self, sim_proc: SimProcess, ec2: Ec2Source
    ) -> None:
        sim = sim_proc.client
        await sim.add_nic(spec(PRIMARY, 0))
        await sim.add_nic(spec(subnet_ipv6_cidrs=["2001:db8:11::/64"]))
        await asyncio.sleep(0.3)
        await sim.update_nic(MAC, {"schedule": {"ipv6s": [[0.3, "2001:db8:11::25"]]}})
        assert [f.kind for f in (await ec2.fetch(MAC)).flags] == ["ipv6-pending"]
        await asyncio.sleep(0.4)
        assert (await ec2.fetch(MAC)).flags == ()

    async def test_primary_raw_and_faults(self, sim_proc: SimProcess, ec2: Ec2Source) -> None:
        sim = sim_proc.client
        await sim.add_nic(spec(PRIMARY, 0))
        await sim.add_nic(spec())
        await sim.set_primary(MAC)
        assert await ec2.primary_mac() == MAC

        await sim.set_raw("meta-data/network/interfaces/macs/", f"{MAC}/\n../../etc/\n")
        assert await ec2.list_macs() == {MAC}
        await sim.set_raw("meta-data/network/interfaces/macs/", None)

        await sim.set_fault("5xx", 0.3)
        with pytest.raises(FetchError, match="HTTP 503"):
            await ec2.list_macs()
        await asyncio.sleep(0.4)
        assert await ec2.list_macs() == {PRIMARY, MAC}

        await sim.set_fault("token-fail")
        await sim.set_fault("invalidate-tokens")  # one-shot: token-fail stays on
        with pytest.raises(FetchError, match="HTTP 403"):
            await ec2.list_macs()
        await sim.set_fault("none")
        assert await ec2.list_macs() == {PRIMARY, MAC}

    async def test_stats_and_reset(self, sim_proc: SimProcess, ec2: Ec2Source) -> None:
        sim = sim_proc.client
        await sim.add_nic(spec(PRIMARY, 0))
        started = time.monotonic()
        await ec2.list_macs()
        stats = await sim.stats()
        assert stats["requests"] == 2
        assert stats["by_status"] == {"200": 2}
        assert stats["by_method"] == {"PUT": 1, "GET": 1}
        assert [(e["method"], e["path"], e["status"]) for e in stats["log"]] == [
            ("PUT", "/latest/api/token", 200),
            ("GET", "/latest/meta-data/network/interfaces/macs/", 200),
        ]
        # CLOCK_MONOTONIC is system-wide: the simulator's times compare with ours.
        assert started - 1 < stats["log"][0]["t"] < time.monotonic() + 1
        assert "log" not in await sim.stats(log=False)
        await sim.reset_stats()
        assert (await sim.stats())["requests"] == 0

    async def test_hang_fault_is_a_timeout_and_released_on_change(
        self, sim_proc: SimProcess, ec2: Ec2Source
    ) -> None:
        sim = sim_proc.client
        await sim.add_nic(spec(PRIMARY, 0))
        await sim.set_fault("hang")
        with pytest.raises(FetchError, match="timeout"):
            await ec2.list_macs()
        await sim.set_fault("none")
        assert await ec2.list_macs() == {PRIMARY}
        assert (await sim.stats())["by_status"]["0"] == 1

    async def test_bad_requests_are_refused(self, sim_proc: SimProcess) -> None:
        sim = sim_proc.client
        await sim.add_nic(spec())
        cases = [
            (sim.add_nic(spec()), 400, "exists"),
            (sim.add_nic({"mac": "zz"}), 400, "mac"),
            (sim.update_nic("0a:00:00:00:00:99", {"device_number": 2}), 404, "unknown"),
            (sim.update_nic(MAC, {"schedule": {"ipv6s": "soon"}}), 400, "schedule"),
            (sim.remove_nic("0a:00:00:00:00:99"), 404, "unknown"),
            (sim.set_fault("flood"), 400, "unknown fault"),
            (sim.set_fault("5xx", -1), 400, "positive"),
            (sim.set_primary("nope"), 400, "MAC"),
        ]
        for call, status, needle in cases:
            with pytest.raises(SimControlError) as info:
                await call
            assert info.value.status == status
            assert needle in str(info.value)

    async def test_sigterm_exits_cleanly(self, sim_proc: SimProcess) -> None:
        await sim_proc.client.set_fault("hang")
        sim_proc.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(sim_proc.proc.wait, 10) == 0
        assert not sim_proc.control.exists()


def test_scenario_file_is_loaded(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.json"
    scenario.write_text(
        json.dumps(
            {
                "nics": [spec(PRIMARY, 0), spec()],
                "primary": PRIMARY,
                "raw": {"meta-data/instance-id": "i-0fedcba9876543210"},
            }
        )
    )
    sim = ImdsSim()
    sim.load_scenario(json.loads(scenario.read_text()))
    assert [n.mac for n in sim.nics()] == [PRIMARY, MAC]
    assert sim.lookup("meta-data/instance-id") == "i-0fedcba9876543210"


def test_bad_scenario_file_exits_2(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.json"
    scenario.write_text("{not json")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nicreconciled.sim",
            "--control",
            str(tmp_path / "c.sock"),
            "--scenario",
            str(scenario),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 2
    assert "scenario.json" in result.stderr
