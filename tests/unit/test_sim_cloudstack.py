"""The CloudStack VR simulator: what it serves in-process, and `python -m nicreconciled.sim
--cloud cloudstack` driven over its control socket."""

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
from typing import Any

import aiohttp
import pytest

import nicreconciled
from nicreconciled.errors import FetchError
from nicreconciled.sim.client import SimClient, SimControlError
from nicreconciled.sim.cloudstack import DEFAULT_VM, VrSim
from nicreconciled.sim.imds import LISTED_404
from nicreconciled.sources.cloudstack import CloudStackConfig, CloudStackSource, metadata_url
from nicreconciled.sources.http import HttpClient
from tests.unit.test_vr_discovery import MAC0, NXDOMAIN, Tree, nmcli_missing, resolver

REPO = Path(nicreconciled.__file__).resolve().parent.parent
META = "/latest/meta-data/"


# --- in-process ---------------------------------------------------------------------------


class TestLookup:
    def test_listing_needs_the_trailing_slash_and_lists_every_key(self) -> None:
        sim = VrSim()
        assert sim.lookup(META) == "\n".join(sorted(DEFAULT_VM))
        assert sim.lookup("/latest/meta-data") is None
        assert sim.lookup(META + "local-ipv4") == "10.1.1.23"
        assert sim.lookup(META + "nope") is None

    def test_user_data_is_404_until_set(self) -> None:
        sim = VrSim()
        assert sim.lookup("/latest/user-data") is None
        sim.set_vm({"user-data": "#cloud-config\n"})
        assert sim.lookup("/latest/user-data") == "#cloud-config\n"
        assert "user-data" not in (sim.lookup(META) or "").split("\n")
        assert sim.vm()["user-data"] == "#cloud-config\n"

    def test_keys_are_set_removed_or_listed_but_404(self) -> None:
        sim = VrSim()
        sim.set_vm({"local-ipv4": None, "public-ipv4": LISTED_404, "vm-id": ""})
        listing = (sim.lookup(META) or "").split("\n")
        assert "local-ipv4" not in listing
        assert "public-ipv4" in listing
        assert sim.lookup(META + "public-ipv4") is None
        assert sim.lookup(META + "vm-id") == ""

    def test_a_bad_change_changes_nothing(self) -> None:
        sim = VrSim()
        cases: list[tuple[dict[str, Any], str]] = [
            ({"local-ipv4": "10.0.0.9", "../etc": "x"}, "not a metadata key"),
            ({"local-ipv4": "10.0.0.9", "vm-id": 7}, "vm-id: value must be a string or null"),
        ]
        for bad, message in cases:
            with pytest.raises(ValueError, match=message):
                sim.set_vm(bad)
        assert sim.lookup(META + "local-ipv4") == "10.1.1.23"

    def test_only_faults_that_fit_a_plain_http_server(self) -> None:
        sim = VrSim()
        with pytest.raises(ValueError, match="unknown fault 'token-fail'"):
            sim.set_fault("token-fail")
        with pytest.raises(ValueError, match="positive"):
            sim.set_fault("5xx", 0)


@pytest.fixture
async def vr() -> AsyncIterator[VrSim]:
    sim = VrSim(slow_seconds=0.6)
    await sim.start()
    yield sim
    await sim.stop()


class TestServing:
    async def test_text_plain_bodies_and_405_for_writes(self, vr: VrSim) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{vr.url}{META}instance-id") as resp:
                assert resp.status == 200
                assert resp.content_type == "text/plain"
                assert await resp.text() == DEFAULT_VM["instance-id"]
            async with session.post(f"{vr.url}{META}instance-id") as resp:
                assert resp.status == 405
            async with session.get(f"{vr.url}/latest/user-data") as resp:
                assert resp.status == 404
        assert vr.stats()["by_status"] == {"200": 1, "404": 1, "405": 1}

    @pytest.mark.parametrize(
        ("fault", "error"),
        [
            ("5xx", "HTTP 503"),
            ("reset", "connection closed by server|Connection reset|ClientOSError"),
            ("oversize", "oversized body"),
            ("hang", "timeout"),
        ],
    )
    async def test_faults(self, vr: VrSim, http: HttpClient, fault: str, error: str) -> None:
        vr.set_fault(fault)
        with pytest.raises(FetchError, match=error):
            await http.request("GET", f"{vr.url}{META}")
        vr.set_fault("none")
        assert (await http.request("GET", f"{vr.url}{META}")).status == 200

    async def test_slow_answers_arrive_late_but_whole(self, vr: VrSim) -> None:
        vr.set_fault("slow")
        client = HttpClient(timeout=5.0)
        try:
            started = time.monotonic()
            answer = await client.request("GET", f"{vr.url}{META}local-ipv4")
        finally:
            await client.close()
        assert answer.body == "10.1.1.23"
        # Nine one-byte pieces, 0.06 s apart: the body is whole only after the last one.
        assert time.monotonic() - started >= 0.4

    async def test_a_timed_fault_ends_by_itself(self, vr: VrSim, http: HttpClient) -> None:
        vr.set_fault("5xx", 0.2)
        with pytest.raises(FetchError, match="HTTP 503"):
            await http.request("GET", f"{vr.url}{META}")
        await asyncio.sleep(0.3)
        assert (await http.request("GET", f"{vr.url}{META}")).status == 200


# --- out of process: the control API over a real unix socket ------------------------------


@dataclass
class VrProcess:
    proc: subprocess.Popen[str]
    control: Path
    client: SimClient
    url: str


def _spawn(workdir: Path, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    argv = ["--cloud", "cloudstack", "--listen", "127.0.0.1:0"]
    argv += ["--control", str(workdir / "ctl.sock"), *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "nicreconciled.sim", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture
def workdir() -> Iterator[Path]:
    # A short directory: unix socket paths are limited to 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="nicr-vr-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def vr_proc(workdir: Path) -> AsyncIterator[VrProcess]:
    proc = _spawn(workdir)
    client = SimClient(workdir / "ctl.sock")
    try:
        ready = await client.wait_ready(15)
        assert ready["pid"] == proc.pid
        yield VrProcess(proc, workdir / "ctl.sock", client, ready["vr"])
    finally:
        await client.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def cs(vr_proc: VrProcess, tmp_path: Path) -> CloudStackSource:
    tree = Tree(tmp_path).link("eth0", MAC0, 2)
    tree.routes(("eth0", "127.43.0.254", 100))
    tree.networkd(2, address="10.1.1.23", netmask="255.255.255.0", router="10.1.1.1")
    return CloudStackSource(
        CloudStackConfig(endpoint=vr_proc.url),
        HttpClient(timeout=0.5),
        root=tmp_path,
        runner=nmcli_missing(),
        resolver=resolver(error=NXDOMAIN),
    )


class TestControlApi:
    async def test_ready_line_and_socket_mode(self, vr_proc: VrProcess) -> None:
        assert vr_proc.proc.stdout is not None
        line = json.loads(vr_proc.proc.stdout.readline())
        assert line == {"vr": vr_proc.url, "control": str(vr_proc.control)}
        assert vr_proc.control.stat().st_mode & 0o777 == 0o600

    async def test_set_vm_changes_what_the_source_sees(
        self, vr_proc: VrProcess, cs: CloudStackSource
    ) -> None:
        sim = vr_proc.client
        assert (await sim.get_vm())["local-ipv4"] == "10.1.1.23"
        assert (await cs.fetch(MAC0)).flags == ()

        served = await sim.set_vm({"local-ipv4": None, "user-data": "#!/bin/sh\n"})
        assert "local-ipv4" not in served
        assert served["user-data"] == "#!/bin/sh\n"
        obs = await cs.fetch(MAC0)
        assert [f.kind for f in obs.flags] == ["incomplete"]

        await sim.set_vm({"local-ipv4": "10.1.1.23"})
        url = metadata_url(vr_proc.url, "local-ipv4")
        assert await cs.probe([url]) == {url: "10.1.1.23"}
        await cs.close()

    async def test_faults_over_control(self, vr_proc: VrProcess, cs: CloudStackSource) -> None:
        sim = vr_proc.client
        await cs.fetch(MAC0)
        await sim.set_fault("5xx", 0.3)
        with pytest.raises(FetchError, match="HTTP 503"):
            await cs.fetch(MAC0)
        await asyncio.sleep(0.4)
        assert (await cs.fetch(MAC0)).state is not None

        await sim.set_fault("hang")
        with pytest.raises(FetchError, match="timeout"):
            await cs.fetch(MAC0)
        await sim.set_fault("none")
        assert (await cs.fetch(MAC0)).state is not None
        assert (await sim.stats(log=False))["by_status"]["0"] >= 1
        await cs.close()

    async def test_stats_and_reset(self, vr_proc: VrProcess, cs: CloudStackSource) -> None:
        sim = vr_proc.client
        await cs.fetch(MAC0)
        stats = await sim.stats()
        assert stats["requests"] == 3  # liveness, instance-id, local-ipv4
        assert stats["by_method"] == {"GET": 3}
        assert sorted(e["path"] for e in stats["log"]) == [
            f"{META}instance-id",
            f"{META}instance-id",
            f"{META}local-ipv4",
        ]
        assert "log" not in await sim.stats(log=False)
        await sim.reset_stats()
        assert (await sim.stats())["requests"] == 0
        await cs.close()

    async def test_bad_requests_are_refused(self, vr_proc: VrProcess) -> None:
        sim = vr_proc.client
        cases = [
            (sim.set_vm({"../x": "1"}), "not a metadata key"),
            (sim.set_vm({"vm-id": 7}), "value must be a string or null"),  # type: ignore[dict-item]
            (sim.set_fault("token-fail"), "unknown fault"),
            (sim.set_fault("5xx", -1), "positive"),
        ]
        for call, needle in cases:
            with pytest.raises(SimControlError) as info:
                await call
            assert info.value.status == 400
            assert needle in str(info.value)

    async def test_sigterm_exits_cleanly(self, vr_proc: VrProcess) -> None:
        await vr_proc.client.set_fault("hang")
        vr_proc.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(vr_proc.proc.wait, 10) == 0
        assert not vr_proc.control.exists()


async def test_scenario_file_is_loaded(workdir: Path) -> None:
    scenario = workdir / "scenario.json"
    scenario.write_text(json.dumps({"vm": {"local-ipv4": "10.9.9.9", "vm-id": None}}))
    proc = _spawn(workdir, "--scenario", str(scenario))
    client = SimClient(workdir / "ctl.sock")
    try:
        await client.wait_ready(15)
        vm = await client.get_vm()
        assert vm["local-ipv4"] == "10.9.9.9"
        assert "vm-id" not in vm
    finally:
        await client.close()
        proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
