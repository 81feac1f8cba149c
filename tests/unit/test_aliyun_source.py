"""AliyunSource against the real AliyunSim over loopback: tokens (sent on every request,
required in hardened mode, renewed before they expire, replaced once when refused), every
fault of the service, garbage, late propagation, probes and predictions, requests per NIC;
and the simulator itself, in process and as ``python -m nicreconciled.sim --cloud aliyun``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from nicreconciled.errors import FetchError, MetadataError
from nicreconciled.sim.aliyun import TOKEN_HEADER, TTL_HEADER, AliyunSim
from nicreconciled.sim.client import SimClient
from nicreconciled.sources.aliyun import AliyunConfig, AliyunSource
from nicreconciled.sources.aliyun_parse import KEYS, MACS_DIR, key_path, parse_nic
from nicreconciled.sources.http import HttpClient

REPO = Path(__file__).resolve().parents[2]
PRIMARY = "00:16:3e:00:00:01"
MAC = "00:16:3e:00:01:02"


def eni(mac: str, n: int, **extra: Any) -> dict[str, Any]:
    """ENI N of the simulator: 10.0.N.10 (and .11) in 10.0.N.0/24, router .253."""
    spec = {
        "mac": mac,
        "primary_ip_address": f"10.0.{n}.10",
        "private_ipv4s": [f"10.0.{n}.10", f"10.0.{n}.11"],
        "vswitch_cidr_block": f"10.0.{n}.0/24",
        "gateway": f"10.0.{n}.253",
    }
    return spec | extra


def dual(n: int) -> dict[str, Any]:
    return {
        "ipv6s": [f"2408:4005:{n}::10"],
        "vswitch_ipv6_cidr_block": f"2408:4005:{n}::/64",
        "ipv6_gateway": f"2408:4005:{n}::ffff",
    }


@pytest.fixture
async def sim() -> AsyncIterator[AliyunSim]:
    simulator = AliyunSim(slow_seconds=3.0)
    await simulator.start()
    simulator.add_nic(eni(PRIMARY, 0))
    yield simulator
    await simulator.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def source(sim: AliyunSim, http: HttpClient, **kw: Any) -> AliyunSource:
    ttl = kw.pop("token_ttl", 21600)
    return AliyunSource(AliyunConfig(endpoint=sim.url, token_ttl=ttl), http, **kw)


def token_states(sim: AliyunSim) -> list[str]:
    return [entry["token"] for entry in sim.stats()["token_log"]]


class TestTokens:
    async def test_every_request_carries_the_one_token(
        self, sim: AliyunSim, http: HttpClient
    ) -> None:
        sim.add_nic(eni(MAC, 1))
        src = source(sim, http)
        assert (await src.fetch(MAC)).state is not None
        assert (await src.fetch(PRIMARY)).state is not None
        log = sim.stats()["token_log"]
        assert log[0]["method"] == "PUT"
        assert (log[0]["token"], log[0]["ttl"]) == ("issued", "21600")
        assert {(e["token"], e["number"]) for e in log[1:]} == {("valid", 1)}
        assert set(sim.by_status) == {200, 404}  # no 401, no 403: 404 = no IPv6

    async def test_hardened_mode_refuses_a_request_without_a_token(
        self, sim: AliyunSim, http: HttpClient
    ) -> None:
        url = f"{sim.url}/latest/meta-data/mac"
        assert (await http.request("GET", url)).status == 403
        assert (await http.request("GET", url, {TOKEN_HEADER: "made-up"})).status == 401
        sim.hardened = False  # normal mode: no token is fine, a wrong one is not
        assert (await http.request("GET", url)).status == 200
        assert (await http.request("GET", url, {TOKEN_HEADER: "made-up"})).status == 401
        assert token_states(sim) == ["missing", "unknown", "missing", "unknown"]

    async def test_the_token_is_renewed_before_it_expires(
        self, sim: AliyunSim, http: HttpClient
    ) -> None:
        clock = Clock()
        src = source(sim, http, token_ttl=10, clock=clock)
        await src.fetch(PRIMARY)
        clock.now += 4.9  # the margin is half of a short life
        await src.fetch(PRIMARY)
        assert src.token.obtained == 1
        clock.now += 0.2
        await src.fetch(PRIMARY)
        assert src.token.obtained == 2
        puts = [e for e in sim.stats()["token_log"] if e["method"] == "PUT"]
        assert [(e["token"], e["ttl"]) for e in puts] == [("issued", "10"), ("issued", "10")]
        assert set(token_states(sim)) == {"issued", "valid"}

    async def test_a_refused_token_is_replaced_once(self, sim: AliyunSim, http: HttpClient) -> None:
        src = source(sim, http)
        await src.fetch(PRIMARY)
        sim.set_fault("invalidate-tokens")
        sim.reset_stats()
        assert (await src.fetch(PRIMARY)).state is not None
        assert src.token.obtained == 2
        # Every key's first try was refused at once; one PUT served them all.
        assert sim.by_method["PUT"] == 1
        assert sim.stats()["tokens"]["by_state"]["unknown"] == len(KEYS)

    @pytest.mark.parametrize("status", ["401", "403"])
    async def test_a_token_refused_twice_is_a_fetch_error(
        self, sim: AliyunSim, http: HttpClient, status: str
    ) -> None:
        src = source(sim, http)
        await src.fetch(PRIMARY)
        sim.set_fault(status)
        with pytest.raises(FetchError, match=rf"HTTP {status} with a fresh token$"):
            await src.fetch(PRIMARY)
        assert src.token.obtained == 2  # one fresh token for all the refused keys
        sim.set_fault("none")
        assert (await src.fetch(PRIMARY)).state is not None

    async def test_no_token_at_all_is_a_fetch_error(self, sim: AliyunSim, http: HttpClient) -> None:
        sim.set_fault("token-fail")
        src = source(sim, http)
        with pytest.raises(FetchError, match=r"^PUT /latest/api/token: HTTP 403"):
            await src.fetch(PRIMARY)
        assert not await src.detect()
        assert "403" in src.detect_error

    async def test_the_service_refuses_a_bad_ttl(self, sim: AliyunSim, http: HttpClient) -> None:
        url = f"{sim.url}/latest/api/token"
        for ttl in ("0", "21601", "x", ""):
            assert (await http.request("PUT", url, {TTL_HEADER: ttl})).status == 400, ttl
        forwarded = {TTL_HEADER: "60", "X-Forwarded-For": "example.com"}
        assert (await http.request("PUT", url, forwarded)).status == 403


class TestFetch:
    async def test_fetch_matches_parse_of_the_same_answers(
        self, sim: AliyunSim, http: HttpClient
    ) -> None:
        sim.add_nic(eni(MAC, 1) | dual(1))
        obs = await source(sim, http).fetch(MAC)
        listing = sim.lookup(MACS_DIR) or ""
        raw = {key: sim.lookup(key_path(MAC, key)) for key in KEYS}
        assert obs == parse_nic(MAC, listing, raw, PRIMARY)
        assert obs.state is not None
        assert [str(a) for a in obs.state.ipv4_addresses] == ["10.0.1.10", "10.0.1.11"]
        assert str(obs.state.ipv6_gateway) == "2408:4005:1::ffff"

    async def test_requests_per_nic_in_steady_state(self, sim: AliyunSim, http: HttpClient) -> None:
        macs = [f"00:16:3e:00:02:{n:02x}" for n in range(1, 9)]
        for n, mac in enumerate(macs, 1):
            sim.add_nic(eni(mac, n))
        src = source(sim, http)
        sim.reset_stats()
        await asyncio.gather(*(src.fetch(mac) for mac in macs))
        # A burst: one token, one listing, the primary MAC once, then each ENI's keys.
        assert sim.requests == 3 + len(macs) * len(KEYS)
        sim.reset_stats()
        for mac in macs:
            await src.fetch(mac)
        # Steady state: a re-check costs exactly the ENI's keys, no listing, no token.
        assert sim.requests == len(macs) * len(KEYS) == 8 * 8

    async def test_unknown_nics_cost_one_listing(self, sim: AliyunSim, http: HttpClient) -> None:
        src = source(sim, http)
        await src.fetch(PRIMARY)
        sim.reset_stats()
        macs = [f"0a:00:00:00:00:{n:02x}" for n in range(20)]
        observations = await asyncio.gather(*(src.fetch(mac) for mac in macs))
        assert {o.flags[0].kind for o in observations} == {"not-listed"}
        assert sim.requests == 1

    async def test_a_late_ipv6_address_shows_up(self, sim: AliyunSim, http: HttpClient) -> None:
        spec = eni(MAC, 2) | dual(2) | {"ipv6s": []}
        sim.add_nic(spec | {"schedule": {"ipv6s": [[0.3, ["2408:4005:2::10"]]]}})
        src = source(sim, http)
        first = await src.fetch(MAC)
        assert [f.kind for f in first.flags] == ["ipv6-pending"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while (await src.probe(first.flags[0].keys)) == first.probe:
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
        answers = await src.probe(first.flags[0].keys)
        predicted = src.predict(MAC, answers)
        assert predicted is not None
        assert predicted.state is not None
        assert [str(a) for a in predicted.state.ipv6_addresses] == ["2408:4005:2::10"]
        assert predicted == await src.fetch(MAC)

    async def test_a_detached_eni_is_no_longer_listed(
        self, sim: AliyunSim, http: HttpClient
    ) -> None:
        sim.add_nic(eni(MAC, 3))
        src = source(sim, http, listing_ttl=0.0)
        assert (await src.fetch(MAC)).state is not None
        sim.remove_nic(MAC)
        obs = await src.fetch(MAC)
        assert obs.state is None
        assert [f.kind for f in obs.flags] == ["not-listed"]
        assert src.predict(MAC, {key_path(MAC, "ipv6s"): None}) is None

    async def test_garbage_is_a_metadata_error(self, sim: AliyunSim, http: HttpClient) -> None:
        sim.set_raw(key_path(PRIMARY, "private-ipv4s"), "10.0.0.10,10.0.0.11")
        with pytest.raises(MetadataError, match=r"^private-ipv4s: not a bracketed list"):
            await source(sim, http).fetch(PRIMARY)
        sim.set_raw(key_path(PRIMARY, "private-ipv4s"), None)
        sim.set_raw("meta-data/mac", "not a mac")
        with pytest.raises(MetadataError, match=r"^meta-data/mac: "):
            await source(sim, http).fetch(PRIMARY)

    @pytest.mark.parametrize("mode", ["5xx", "hang", "reset", "slow", "oversize"])
    async def test_a_failing_service_is_a_fetch_error_never_absent(
        self, sim: AliyunSim, http: HttpClient, mode: str
    ) -> None:
        src = source(sim, http)
        await src.fetch(PRIMARY)
        sim.set_fault(mode)
        with pytest.raises(FetchError):
            await src.fetch(PRIMARY)
        sim.set_fault("none")
        assert (await src.fetch(PRIMARY)).state is not None

    async def test_probe_refuses_keys_outside_the_metadata(
        self, sim: AliyunSim, http: HttpClient
    ) -> None:
        src = source(sim, http)
        for key in ("user-data", "meta-data/../user-data", "meta-data//mac", "/etc/passwd"):
            with pytest.raises(ValueError, match="not a metadata probe key"):
                await src.probe([key])
        answers = await src.probe([MACS_DIR, "meta-data/mac"])
        assert answers == {MACS_DIR: f"{PRIMARY}/", "meta-data/mac": PRIMARY}

    async def test_detect(self, sim: AliyunSim, http: HttpClient, closed_port: int) -> None:
        assert await source(sim, http).detect()
        src = AliyunSource(AliyunConfig(endpoint=f"http://127.0.0.1:{closed_port}"), http)
        assert not await src.detect()
        assert "cannot connect" in src.detect_error


class TestSimulator:
    async def test_it_serves_the_real_shapes(self, sim: AliyunSim, http: HttpClient) -> None:
        sim.add_nic(eni(MAC, 1) | dual(1) | {"ipv6s": ["2408:4005:1::10", "2408:4005:1::11"]})
        assert sim.lookup(key_path(MAC, "private-ipv4s")) == '["10.0.1.10","10.0.1.11"]'
        assert sim.lookup(key_path(MAC, "ipv6s")) == "[2408:4005:1::10,2408:4005:1::11]"
        assert sim.lookup(key_path(MAC, "netmask")) == "255.255.255.0"
        assert sim.lookup(key_path(PRIMARY, "ipv6s")) is None  # 404 without IPv6
        assert sim.lookup(MACS_DIR) == f"{PRIMARY}/\n{MAC}/"
        assert "vswitch-ipv6-cidr-block" in (sim.lookup(f"{MACS_DIR}{MAC}/") or "")
        token = (await http.request("PUT", f"{sim.url}/latest/api/token", {TTL_HEADER: "60"})).body
        for version in ("latest", "2016-01-01"):
            url = f"{sim.url}/{version}/meta-data/mac"
            assert (await http.request("GET", url, {TOKEN_HEADER: token})).body == PRIMARY
        assert (await http.request("GET", f"{sim.url}/")).body == "2016-01-01\nlatest"

    def test_lab_spec(self) -> None:
        mac = "0a:00:00:00:01:01"
        plan: dict[str, Any] = {
            "mac": mac,
            "device_number": 1,
            "ipv4s": ["10.0.11.20", "10.0.11.21"],
            "subnet4": "10.0.11.0/24",
            "gateway4": "10.0.11.1",
            "ipv6s": ["2001:db8:11::10"],
            "subnet6": "2001:db8:11::/64",
            "gateway6": "2001:db8:11::1",
        }
        sim = AliyunSim()
        sim.add_nic(AliyunSim.lab_spec(plan | {"primary": True}))
        raw = {key: sim.lookup(key_path(mac, key)) for key in KEYS}
        obs = parse_nic(mac, sim.lookup(MACS_DIR) or "", raw, sim.primary or "")
        assert obs.state is not None
        assert obs.state.primary
        assert [str(a) for a in obs.state.ipv4_addresses] == plan["ipv4s"]
        assert str(obs.state.ipv6_gateway) == "2001:db8:11::1"


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nicr-ali-"))  # unix socket paths are short
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_the_simulator_runs_as_a_process(workdir: Path, http: HttpClient) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    argv = ["--cloud", "aliyun", "--listen", "127.0.0.1:0", "--control", str(workdir / "c")]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nicreconciled.sim", *argv, stdout=PIPE, stderr=PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 15))
        assert ready["aliyun"].startswith("http://127.0.0.1:")
        async with SimClient(ready["control"]) as client:
            await client.add_nic(eni(PRIMARY, 0))
            await client.add_nic(eni(MAC, 1) | {"schedule": {"gateway": [[0, None]]}})
            src = AliyunSource(AliyunConfig(endpoint=ready["aliyun"]), http)
            assert (await src.fetch(PRIMARY)).state is not None
            assert [f.kind for f in (await src.fetch(MAC)).flags] == ["incomplete"]
            stats = await client.stats()
            assert {e["token"] for e in stats["token_log"]} == {"issued", "valid"}
            assert await client._call("PUT", "/mode", {"hardened": False}) == {"hardened": False}
    finally:
        if proc.returncode is None:
            proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
