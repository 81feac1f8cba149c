"""AzureSource against the real simulator (``AzureSim``, aiohttp on loopback): one request for
every NIC, the header, every fault, garbage, IMDS's rate limit never reached (bursts, resyncs,
a 429), the primary NIC from the kernel's routes, and the simulator's own shape."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nicreconciled.errors import FetchError, MetadataError
from nicreconciled.sim.azure import AzureSim
from nicreconciled.sources.azure import THROTTLED_PAUSE, AzureConfig, AzureSource
from nicreconciled.sources.azure_parse import API_VERSION, NETWORK_PATH, parse_nic
from nicreconciled.sources.http import HttpClient
from tests.unit.test_vr_discovery import Tree

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure"
PRIMARY = "00:0d:3a:00:00:01"


def spec(mac: str, n: int, **extra: Any) -> dict[str, Any]:
    """A NIC of the simulator: 10.0.(10+n).4/24."""
    base = {"mac": mac, "private_ipv4s": [f"10.0.{10 + n}.4"], "subnets4": [f"10.0.{10 + n}.0/24"]}
    return base | extra


@pytest.fixture
async def azure_sim() -> AsyncIterator[AzureSim]:
    simulator = AzureSim(slow_seconds=3.0)
    await simulator.start()
    simulator.add_nic(spec(PRIMARY, 0, public_ipv4s=["104.46.124.81"]))
    yield simulator
    await simulator.stop()


def azure(sim: AzureSim, http: HttpClient, **kw: Any) -> AzureSource:
    return AzureSource(AzureConfig(endpoint=sim.url), http, **kw)


def busiest_second(log: list[dict[str, Any]]) -> int:
    """The most requests the simulator saw in any one second (closed window)."""
    times = sorted(entry["t"] for entry in log)
    return max((sum(1 for u in times if t <= u <= t + 1.0) for t in times), default=0)


class TestOneRequestForEveryNic:
    async def test_n_nics_polling_together_cost_one_request(
        self, azure_sim: AzureSim, http: HttpClient
    ) -> None:
        macs = [f"00:0d:3a:00:01:{n:02x}" for n in range(1, 9)]
        for n, mac in enumerate(macs, 1):
            azure_sim.add_nic(spec(mac, n))
        source = azure(azure_sim, http)
        azure_sim.reset_stats()
        observations = await asyncio.gather(*(source.fetch(mac) for mac in macs))
        assert azure_sim.requests == 1
        assert all(o.state is not None for o in observations)
        # The next poll asks again: an answer from before it began proves nothing new.
        await source.fetch(macs[0])
        assert azure_sim.requests == 2

    async def test_steady_state_costs_one_request_per_tick_whatever_the_nics(
        self, azure_sim: AzureSim, http: HttpClient
    ) -> None:
        """ONE_ANSWER: the NICs' periodic re-checks fall on the same daemon-wide tick."""
        macs = [f"00:0d:3a:00:02:{n:02x}" for n in range(1, 9)]
        for n, mac in enumerate(macs, 1):
            azure_sim.add_nic(spec(mac, n))
        source = azure(azure_sim, http, rate=50)
        assert source.ONE_ANSWER
        azure_sim.reset_stats()
        for _tick in range(3):
            await asyncio.gather(*(source.fetch(mac) for mac in [PRIMARY, *macs]))
        per_nic = azure_sim.requests / 3 / 9
        assert azure_sim.requests == 3, azure_sim.stats()
        assert per_nic == pytest.approx(1 / 9)


class TestTheService:
    async def test_the_header_and_version_are_sent_and_required(
        self, azure_sim: AzureSim, http: HttpClient
    ) -> None:
        obs = await azure(azure_sim, http).fetch(PRIMARY)
        assert obs.state is not None
        assert obs.state.primary
        assert azure_sim.by_status == {200: 1}
        url = f"{azure_sim.url}/{NETWORK_PATH}?api-version={API_VERSION}"
        bare = await http.request("GET", url)
        assert bare.status == 400
        assert bare.body.strip() == (FIXTURES / "header_refused_400.txt").read_text().strip()
        forwarded = await http.request("GET", url, {"Metadata": "true", "X-Forwarded-For": "x"})
        assert forwarded.status == 400
        unversioned = await http.request(
            "GET", f"{azure_sim.url}/{NETWORK_PATH}", {"Metadata": "true"}
        )
        assert unversioned.status == 400
        assert "newest-versions" in json.loads(unversioned.body)

    async def test_a_refused_header_is_a_fetch_error(
        self, azure_sim: AzureSim, http: HttpClient
    ) -> None:
        azure_sim.set_fault("400")
        with pytest.raises(FetchError, match=r"HTTP 400 \(Metadata header refused\?\)"):
            await azure(azure_sim, http).fetch(PRIMARY)

    @pytest.mark.parametrize("mode", ["5xx", "hang", "reset", "slow", "oversize", "410", "429"])
    async def test_a_failing_service_is_a_fetch_error_never_absent(
        self, azure_sim: AzureSim, http: HttpClient, mode: str
    ) -> None:
        azure_sim.set_fault(mode)
        source = azure(azure_sim, http, rate=50)
        with pytest.raises(FetchError):
            await source.fetch(PRIMARY)
        azure_sim.set_fault("none")
        assert (await source.fetch(PRIMARY)).state is not None

    async def test_garbage_is_a_metadata_error(self, azure_sim: AzureSim, http: HttpClient) -> None:
        bad = {"interface": [{"macAddress": "000D3A000001", "ipv4": {"ipAddress": [1]}}]}
        azure_sim.set_raw(NETWORK_PATH, json.dumps(bad))
        with pytest.raises(MetadataError, match=r"^interface\[0\]\.ipv4\.ipAddress\[0\]: "):
            await azure(azure_sim, http).fetch(PRIMARY)

    async def test_detect(self, azure_sim: AzureSim, http: HttpClient) -> None:
        assert await azure(azure_sim, http).detect()
        azure_sim.set_fault("400")
        source = azure(azure_sim, http)
        assert not await source.detect()
        assert "400" in source.detect_error

    async def test_probe_answers_the_document_the_observation_holds(
        self, azure_sim: AzureSim, http: HttpClient
    ) -> None:
        source = azure(azure_sim, http, rate=50)
        mac = "00:0d:3a:00:03:01"
        obs = await source.fetch(mac)
        assert obs.state is None
        assert await source.probe([NETWORK_PATH]) == obs.probe
        azure_sim.add_nic(spec(mac, 1))
        (answer,) = (await source.probe([NETWORK_PATH])).values()
        assert answer != obs.probe[NETWORK_PATH]
        predicted = source.predict(mac, {NETWORK_PATH: answer})
        assert predicted is not None
        assert predicted.state is not None
        with pytest.raises(ValueError, match="not a metadata probe key"):
            await source.probe(["metadata/instance/compute"])

    async def test_a_secondary_ip_configuration_added_live_shows_up(
        self, azure_sim: AzureSim, http: HttpClient
    ) -> None:
        mac = "00:0d:3a:00:03:02"
        later = ["10.0.12.4", "10.0.12.5"]
        azure_sim.add_nic(spec(mac, 2, schedule={"private_ipv4s": [[0.3, later]]}))
        source = azure(azure_sim, http)  # 2 requests a second: under IMDS's limit
        first = (await source.fetch(mac)).state
        assert first is not None
        assert [str(a) for a in first.ipv4_addresses] == ["10.0.12.4"]
        deadline = asyncio.get_running_loop().time() + 5
        while True:
            state = (await source.fetch(mac)).state
            assert state is not None
            if [str(a) for a in state.ipv4_addresses] == later:
                break
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)


class TestRateLimit:
    """IMDS allows 5 requests per second per VM and answers 429 above (the simulator does
    too): the source stays at MAX_RATE (2/s, at most 3 in any second) whatever it is asked."""

    async def test_a_burst_of_nics_polling_and_probing_never_reaches_the_limit(
        self, azure_sim: AzureSim, http: HttpClient
    ) -> None:
        macs = [f"00:0d:3a:00:04:{n:02x}" for n in range(1, 33)]
        for n, mac in enumerate(macs, 1):
            azure_sim.add_nic(spec(mac, n % 200))
        source = azure(azure_sim, http)
        rng = random.Random(7)
        azure_sim.reset_stats()
        loop = asyncio.get_running_loop()
        duration = 2.0
        stop = loop.time() + duration

        async def reconciler(mac: str) -> None:
            # Polls every 0.1 s at first (initial_interval) and probes every 0.4 s, jittered.
            while loop.time() < stop:
                if rng.random() < 0.5:
                    await source.fetch(mac)
                else:
                    await source.probe([NETWORK_PATH])
                await asyncio.sleep(rng.uniform(0.0, 0.4))

        await asyncio.gather(*(reconciler(mac) for mac in macs))
        # A resync: every NIC at the same instant, twice in a row (two SIGHUPs).
        for _ in range(2):
            await asyncio.gather(*(source.fetch(mac) for mac in macs))
        stats = azure_sim.stats()
        assert stats["by_status"] == {"200": azure_sim.requests}, stats["by_status"]
        assert busiest_second(stats["log"]) <= 3
        assert azure_sim.requests <= (duration + 0.5) / 0.5 + 3

    async def test_a_429_pauses_the_next_request(
        self, azure_sim: AzureSim, http: HttpClient
    ) -> None:
        source = azure(azure_sim, http, rate=50)
        azure_sim.set_fault("429")
        loop = asyncio.get_running_loop()
        with pytest.raises(FetchError, match="HTTP 429"):
            await source.fetch(PRIMARY)
        throttled_at = loop.time()
        azure_sim.set_fault("none")
        assert (await source.fetch(PRIMARY)).state is not None
        assert loop.time() - throttled_at >= THROTTLED_PAUSE * 0.9
        assert azure_sim.by_status == {429: 1, 200: 1}

    async def test_the_simulator_refuses_the_sixth_request_of_a_second(
        self, azure_sim: AzureSim, http: HttpClient
    ) -> None:
        url = f"{azure_sim.url}/{NETWORK_PATH}?api-version={API_VERSION}"
        statuses = []
        for _ in range(6):
            try:
                statuses.append((await http.request("GET", url, {"Metadata": "true"})).status)
            except FetchError as exc:
                statuses.append(int(str(exc).rsplit(" ", 1)[-1]))
        assert statuses == [200] * 5 + [429]
        (entry,) = [e for e in azure_sim.stats()["log"] if e["status"] == 429]
        assert entry["path"] == f"/{NETWORK_PATH}"


class TestThePrimaryNic:
    """IMDS does not promise the order of its NICs: the primary is the one carrying the
    kernel's default route, the first listed only when none does."""

    def tree(self, root: Path) -> Tree:
        return Tree(root).link("eth0", PRIMARY, 2).link("eth1", "00:0d:3a:00:05:01", 3)

    async def test_the_nic_with_the_default_route_even_listed_second(
        self, azure_sim: AzureSim, http: HttpClient, tmp_path: Path
    ) -> None:
        self.tree(tmp_path).routes(("eth0", "10.0.10.1", 100))
        azure_sim.add_nic(spec("00:0d:3a:00:05:01", 1, primary=True))  # listed first
        source = azure(azure_sim, http, root=tmp_path, rate=50)
        primary = (await source.fetch(PRIMARY)).state
        secondary = (await source.fetch("00:0d:3a:00:05:01")).state
        assert primary is not None
        assert secondary is not None
        assert (primary.primary, primary.device_number, primary.route_table) == (True, 0, 10000)
        assert not secondary.primary
        assert secondary.device_number == 2  # ifindex 3 folded into 1..99
        assert (secondary.route_table, secondary.route_metric) == (10002, 514)

    async def test_our_own_dhcp_route_on_a_secondary_does_not_count(
        self, azure_sim: AzureSim, http: HttpClient, tmp_path: Path
    ) -> None:
        tree = self.tree(tmp_path)
        azure_sim.add_nic(spec("00:0d:3a:00:05:01", 1))
        source = azure(azure_sim, http, root=tmp_path, rate=50)
        tree.routes(("eth0", "10.0.10.1", 100))
        await source.fetch("00:0d:3a:00:05:01")  # learns its number: metric 514
        # The primary's route is gone for a moment (a DHCP renewal); the secondary's own
        # DHCP default route (our metric) is left: it does not make it the primary.
        tree.routes(("eth1", "10.0.11.1", 514))
        state = (await source.fetch("00:0d:3a:00:05:01")).state
        assert state is not None
        assert not state.primary

    async def test_without_routes_the_first_listed(
        self, azure_sim: AzureSim, http: HttpClient, tmp_path: Path
    ) -> None:
        self.tree(tmp_path)
        azure_sim.add_nic(spec("00:0d:3a:00:05:01", 1))
        state = (await azure(azure_sim, http, root=tmp_path).fetch(PRIMARY)).state
        assert state is not None
        assert state.primary


class TestTheSimulator:
    async def test_it_serves_the_real_shape(self, azure_sim: AzureSim) -> None:
        azure_sim.add_nic(spec("00:0d:3a:00:06:01", 1, primary=True))
        served = json.loads(azure_sim.document())
        macs = [i["macAddress"] for i in served["interface"]]
        assert macs == ["000D3A000601", "000D3A000001"]
        first = served["interface"][1]
        assert first["ipv4"]["ipAddress"] == [
            {"privateIpAddress": "10.0.10.4", "publicIpAddress": "104.46.124.81"}
        ]
        assert first["ipv4"]["subnet"] == [{"address": "10.0.10.0", "prefix": "24"}]
        assert first["ipv6"] == {"ipAddress": []}
        shape = json.loads((FIXTURES / "two_nics_secondary_ip.json").read_text())["document"]
        assert set(first) == set(shape["interface"][0])

    async def test_its_429_is_the_services(self, azure_sim: AzureSim, http: HttpClient) -> None:
        azure_sim.set_fault("429")
        url = f"{azure_sim.url}/{NETWORK_PATH}?api-version={API_VERSION}"
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, headers={"Metadata": "true"}) as resp,
        ):
            assert resp.status == 429
            body = await resp.text()
        assert body.strip() == (FIXTURES / "throttled_429.txt").read_text().strip()

    def test_lab_spec_gives_the_plans_state(self) -> None:
        sim = AzureSim()
        plan = {
            "mac": "0a:00:00:00:01:01",
            "device_number": 1,
            "ipv4s": ["10.0.11.20", "10.0.11.21"],
            "subnet4": "10.0.11.0/24",
            "gateway4": "10.0.11.1",
            "ipv6s": ["2001:db8:11::10"],
            "subnet6": "2001:db8:11::/64",
            "gateway6": "2001:db8:11::1",
        }
        sim.add_nic(AzureSim.lab_spec(plan))
        state = parse_nic(plan["mac"], sim.document(), primary_mac=PRIMARY).state
        assert state is not None
        assert [str(a) for a in state.ipv4_addresses] == plan["ipv4s"]
        assert str(state.ipv4_gateway) == plan["gateway4"]
        assert [str(a) for a in state.ipv6_addresses] == plan["ipv6s"]
        assert [str(s) for s in state.ipv6_subnets] == [plan["subnet6"]]

    def test_a_schedule_names_a_field(self) -> None:
        with pytest.raises(ValueError, match="schedule: 'colour'"):
            AzureSim().add_nic(spec(PRIMARY, 0, schedule={"colour": [[1, "x"]]}))
