"""GceSource against the real GceSim over loopback: one request for N NICs, the header, every
fault, garbage, probes, late changes, dynamic NICs; and the long poll: a change delivered
through one open request, a quiet one answered unchanged, the new document handed to the
fetches, every fault on a held request."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from nicreconciled.errors import FetchError, MetadataError
from nicreconciled.sim.gce import NICS_PATH, VLANS_PATH, GceSim, etag_of
from nicreconciled.sources.gce import HEADERS, GceConfig, GceSource
from nicreconciled.sources.gce_parse import parse_nic
from nicreconciled.sources.http import HttpClient
from tests.unit.conftest import Serve

NIC0 = "42:01:0a:80:00:02"


def nic(mac: str, n: int, **extra: Any) -> dict[str, Any]:
    """A NIC spec of the simulator: index N, 10.(128+N).0.5 in a /24 via .1."""
    spec = {
        "mac": mac,
        "index": n,
        "ip": f"10.{128 + n}.0.5",
        "subnetmask": "255.255.255.0",
        "gateway": f"10.{128 + n}.0.1",
    }
    return spec | extra


@pytest.fixture
async def gce_sim() -> AsyncIterator[GceSim]:
    simulator = GceSim(slow_seconds=3.0)
    await simulator.start()
    simulator.add_nic(nic(NIC0, 0))
    yield simulator
    await simulator.stop()


def gce(sim: GceSim, http: HttpClient, **kw: Any) -> GceSource:
    return GceSource(GceConfig(endpoint=sim.url), http, **kw)


async def held(sim: GceSim) -> None:
    """Until the simulator holds a long poll."""
    async with asyncio.timeout(10):
        while not sim.holding:  # noqa: ASYNC110 (the simulator offers no event)
            await asyncio.sleep(0.01)


async def primed(source: GceSource, sim: GceSim) -> None:
    """SOURCE's long poll knows the ETag: its first wait, ended by a change."""
    waiting = asyncio.ensure_future(source.wait_for_change(30))
    await held(sim)
    sim.update_nic(NIC0, {"dns_servers": ["169.254.169.254", "10.0.0.2"]})
    assert await waiting is True


def nics_requests(sim: GceSim) -> list[str]:
    """The requests for the NIC document (long polls counted when they were answered)."""
    return [path for _, _, path, _ in sim.log if path == f"/{NICS_PATH}"]


class TestAgainstTheSimulator:
    async def test_n_nics_polling_together_cost_one_request(
        self, gce_sim: GceSim, http: HttpClient
    ) -> None:
        macs = [f"42:01:0a:80:01:{n:02x}" for n in range(1, 8)]
        for n, mac in enumerate(macs, 1):
            gce_sim.add_nic(nic(mac, n))
        source = gce(gce_sim, http)
        observations = await asyncio.gather(*(source.fetch(mac) for mac in macs))
        assert len(nics_requests(gce_sim)) == 1
        assert [o.state.route_table for o in observations if o.state] == [
            10000 + n for n in range(1, 8)
        ]
        # The next poll asks again: an answer from before it began proves nothing new.
        await source.fetch(macs[0])
        assert len(nics_requests(gce_sim)) == 2

    async def test_the_header_is_sent_and_required(self, gce_sim: GceSim, http: HttpClient) -> None:
        obs = await gce(gce_sim, http).fetch(NIC0)
        assert obs.state is not None
        assert obs.state.primary
        url = f"{gce_sim.url}/{NICS_PATH}?recursive=true"
        assert (await http.request("GET", url)).status == 403
        wrong = await http.request("GET", url, {"Metadata-Flavor": "google"})
        assert wrong.status == 403
        forwarded = await http.request("GET", url, {**HEADERS, "X-Forwarded-For": "10.0.0.9"})
        assert forwarded.status == 403
        answer = await http.request("GET", url, HEADERS)
        assert answer.status == 200
        assert answer.etag == etag_of(answer.body)

    async def test_a_refused_header_is_a_fetch_error(
        self, gce_sim: GceSim, http: HttpClient
    ) -> None:
        gce_sim.set_fault("403")
        with pytest.raises(FetchError, match=r"HTTP 403 \(Metadata-Flavor header refused\?\)"):
            await gce(gce_sim, http).fetch(NIC0)

    @pytest.mark.parametrize("mode", ["5xx", "hang", "reset", "slow", "oversize"])
    async def test_a_failing_service_is_a_fetch_error_never_absent(
        self, gce_sim: GceSim, http: HttpClient, mode: str
    ) -> None:
        gce_sim.set_fault(mode)
        source = gce(gce_sim, http)
        with pytest.raises(FetchError):
            await source.fetch(NIC0)
        gce_sim.set_fault("none")
        assert (await source.fetch(NIC0)).state is not None

    async def test_garbage_is_a_metadata_error(self, gce_sim: GceSim, http: HttpClient) -> None:
        gce_sim.set_raw(NICS_PATH, json.dumps([{"mac": NIC0, "ip": 1}]))
        with pytest.raises(MetadataError, match=r"network-interfaces\[0\]\.ip"):
            await gce(gce_sim, http).fetch(NIC0)

    async def test_probe_answers_the_document_the_observation_holds(
        self, gce_sim: GceSim, http: HttpClient
    ) -> None:
        source = gce(gce_sim, http)
        mac = "42:01:0a:80:01:01"
        obs = await source.fetch(mac)
        assert obs.state is None
        assert await source.probe([NICS_PATH]) == obs.probe
        gce_sim.add_nic(nic(mac, 1))
        (answer,) = (await source.probe([NICS_PATH])).values()
        assert answer != obs.probe[NICS_PATH]
        predicted = source.predict(mac, {NICS_PATH: answer})
        assert predicted is not None
        assert predicted.state is not None
        with pytest.raises(ValueError, match="not a metadata probe key"):
            await source.probe(["computeMetadata/v1/instance/id"])

    async def test_a_late_alias_range_shows_up(self, gce_sim: GceSim, http: HttpClient) -> None:
        mac = "42:01:0a:80:01:02"
        gce_sim.add_nic(nic(mac, 1, schedule={"ipAliases": [[0.3, ["10.129.0.16/28"]]]}))
        source = gce(gce_sim, http)
        first = (await source.fetch(mac)).state
        assert first is not None
        assert not first.local_routes
        deadline = asyncio.get_running_loop().time() + 5
        while True:
            state = (await source.fetch(mac)).state
            assert state is not None
            if state.local_routes:
                break
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        assert [str(r) for r in state.local_routes] == ["10.129.0.16/28"]

    async def test_detect(self, gce_sim: GceSim, http: HttpClient) -> None:
        assert await gce(gce_sim, http).detect()
        gce_sim.set_fault("403")
        source = gce(gce_sim, http)
        assert not await source.detect()
        assert "403" in source.detect_error

    async def test_the_simulator_serves_the_real_shape(
        self, gce_sim: GceSim, http: HttpClient
    ) -> None:
        gce_sim.add_nic(nic("42:01:0a:80:01:03", 2, external_ip=""))
        gce_sim.add_nic(nic("42:01:0a:80:01:04", 1))
        served = json.loads(gce_sim.document())
        assert [n["mac"] for n in served] == [NIC0, "42:01:0a:80:01:04", "42:01:0a:80:01:03"]
        assert list(served[0]) == sorted(served[0])
        assert set(served[0]) == {
            "accessConfigs",
            "dnsServers",
            "forwardedIps",
            "gateway",
            "ip",
            "ipAliases",
            "mac",
            "mtu",
            "network",
            "subnetmask",
            "targetInstanceIps",
        }
        assert served[2]["accessConfigs"] == [{"externalIp": "", "type": "ONE_TO_ONE_NAT"}]
        base = f"{gce_sim.url}/{NICS_PATH}"
        listing = await http.request("GET", base, HEADERS)
        assert listing.body == "0/\n1/\n2/\n"
        mac = await http.request("GET", f"{base}1/mac", HEADERS)
        assert mac.body == "42:01:0a:80:01:04"
        entry = await http.request("GET", f"{base}1/?recursive=true", HEADERS)
        assert json.loads(entry.body) == served[1]
        plan = {"mac": "0a:00:00:00:01:05", "device_number": 3, "ipv4s": ["10.0.15.20"]}
        spec = GceSim.lab_spec(plan | {"subnet4": "10.0.15.0/24", "gateway4": "10.0.15.1"})
        gce_sim.add_nic(spec)
        state = parse_nic(spec["mac"], gce_sim.document()).state
        assert state is not None
        assert (state.route_table, state.device_number, state.mtu) == (10003, 3, 1460)


class TestDynamicNics:
    async def test_reported_once_per_change_never_a_failure(
        self, gce_sim: GceSim, http: HttpClient
    ) -> None:
        source = gce(gce_sim, http, vlan_interval=0.0, document_ttl=0.0)
        vlan = {"mac": "42:01:0a:00:00:05", "vlan": 10, "ip": "10.0.0.5"}
        gce_sim.set_vlans({"0": {"10": vlan}})

        async def polls(n: int) -> None:
            for _ in range(n):
                assert (await source.fetch(NIC0)).state is not None
                await asyncio.sleep(0.02)  # the look runs beside the fetch

        with capture_logs() as logs:
            await polls(5)
            gce_sim.set_raw(VLANS_PATH, "<html>garbage</html>")
            await polls(3)
            gce_sim.set_raw(VLANS_PATH, None)
            gce_sim.set_fault("5xx")
            with pytest.raises(FetchError):
                await source.fetch(NIC0)
            gce_sim.set_fault("none")
            gce_sim.set_vlans({})
            await polls(3)
        warned = [e["dynamic_nics"] for e in logs if e["event"] == "gce_dynamic_nics_not_managed"]
        assert len(warned) == 2, warned
        assert warned[0] == ["nic0.10 42:01:0a:00:00:05"]
        (unreadable,) = warned[1]
        assert unreadable.startswith("unreadable: computeMetadata/v1/instance/vlan-network")
        assert [e["event"] for e in logs].count("gce_dynamic_nics_gone") == 1
        await source.close()

    async def test_looked_at_once_per_interval(self, gce_sim: GceSim, http: HttpClient) -> None:
        source = gce(gce_sim, http, document_ttl=0.0)
        for _ in range(5):
            await source.fetch(NIC0)
        await asyncio.sleep(0.05)
        vlan_requests = [p for _, _, p, _ in gce_sim.log if p.endswith(VLANS_PATH)]
        assert len(vlan_requests) == 1
        await source.close()


class TestLongPoll:
    async def test_a_change_comes_through_one_open_request_in_well_under_a_second(
        self, gce_sim: GceSim, http: HttpClient
    ) -> None:
        mac = "42:01:0a:80:01:01"
        gce_sim.add_nic(nic(mac, 1))
        source = gce(gce_sim, http)
        before = (await source.fetch(mac)).state
        assert before is not None
        waiting = asyncio.ensure_future(source.wait_for_change(30))
        # The first call learns the ETag from a plain request, then holds one open.
        await held(gce_sim)
        assert not waiting.done()
        open_at = len(nics_requests(gce_sim))
        changed_at = time.monotonic()
        gce_sim.update_nic(mac, {"ip_aliases": ["10.129.0.16/28"]})
        assert await asyncio.wait_for(waiting, 5) is True
        took = time.monotonic() - changed_at
        assert took < 0.5, took
        # The held request answered it: one request more (logged when it completed).
        assert len(nics_requests(gce_sim)) == open_at + 1
        after = (await source.fetch(mac)).state
        assert after is not None
        assert [str(r) for r in after.local_routes] == ["10.129.0.16/28"]
        assert len(nics_requests(gce_sim)) == open_at + 1, "the new document is handed over"

    async def test_a_quiet_wait_answers_unchanged_after_its_timeout(
        self, gce_sim: GceSim, http: HttpClient
    ) -> None:
        source = gce(gce_sim, http)
        started = time.monotonic()
        assert await source.wait_for_change(1) is False
        assert 0.9 < time.monotonic() - started < 3
        assert await source.wait_for_change(0.2) is False  # timeout_sec is whole seconds
        assert len(nics_requests(gce_sim)) == 3  # the priming request + 2 waits
        # A held request says nothing about a stalled server: the client's next request is
        # not held back.
        assert http._hold_until <= time.monotonic()

    async def test_a_change_while_no_wait_was_open_is_reported_by_the_next(
        self, gce_sim: GceSim, http: HttpClient
    ) -> None:
        source = gce(gce_sim, http)
        await primed(source, gce_sim)
        gce_sim.add_nic(nic("42:01:0a:80:01:01", 1))
        started = time.monotonic()
        assert await source.wait_for_change(30) is True
        assert time.monotonic() - started < 0.5

    async def test_a_fetch_seeing_a_change_first_does_not_hide_it_from_the_watch(
        self, gce_sim: GceSim, http: HttpClient
    ) -> None:
        # No sharing: the fetch reads the server now, not the document the wait brought.
        source = gce(gce_sim, http, document_ttl=0.0)
        await primed(source, gce_sim)
        gce_sim.add_nic(nic("42:01:0a:80:01:01", 1))
        assert (await source.fetch("42:01:0a:80:01:01")).state is not None
        assert await source.wait_for_change(30) is True

    async def test_a_scheduled_change_ends_the_hold(
        self, gce_sim: GceSim, http: HttpClient
    ) -> None:
        gce_sim.add_nic(nic("42:01:0a:80:01:01", 1, schedule={"mtu": [[0.6, 1500]]}))
        source = gce(gce_sim, http)
        started = time.monotonic()
        assert await source.wait_for_change(30) is True
        assert time.monotonic() - started < 2

    async def test_fetches_go_on_while_a_wait_is_open(
        self, gce_sim: GceSim, http: HttpClient
    ) -> None:
        source = gce(gce_sim, http)
        waiting = asyncio.ensure_future(source.wait_for_change(30))
        await asyncio.sleep(0.2)
        for _ in range(3):
            assert (await source.fetch(NIC0)).state is not None
        assert not waiting.done()
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)

    @pytest.mark.parametrize("mode", ["5xx", "reset", "oversize", "403"])
    async def test_a_fault_met_by_a_new_wait_is_a_fetch_error(
        self, gce_sim: GceSim, http: HttpClient, mode: str
    ) -> None:
        source = gce(gce_sim, http)
        await primed(source, gce_sim)
        gce_sim.set_fault(mode)
        with pytest.raises(FetchError):
            await source.wait_for_change(30)

    @pytest.mark.parametrize("mode", ["5xx", "hang", "reset", "oversize", "403"])
    async def test_a_fault_set_during_a_wait_ends_it_as_a_fetch_error(
        self, gce_sim: GceSim, http: HttpClient, mode: str
    ) -> None:
        source = gce(gce_sim, http)
        await primed(source, gce_sim)
        waiting = asyncio.ensure_future(source.wait_for_change(1))
        await held(gce_sim)
        gce_sim.set_fault(mode, 30 if mode == "hang" else None)
        started = time.monotonic()
        with pytest.raises(FetchError):
            await asyncio.wait_for(waiting, 15)
        # A hang is bounded by the wait plus the client's timeout, not by the fault.
        assert time.monotonic() - started < 2.5

    async def test_a_slow_answer_to_a_wait_still_counts(
        self, gce_sim: GceSim, http: HttpClient
    ) -> None:
        gce_sim.slow_seconds = 0.5
        source = gce(gce_sim, http)
        await primed(source, gce_sim)
        gce_sim.set_fault("slow")
        gce_sim.add_nic(nic("42:01:0a:80:01:01", 1))
        assert await source.wait_for_change(5) is True

    async def test_garbage_is_a_change_the_fetch_then_refuses(
        self, gce_sim: GceSim, http: HttpClient
    ) -> None:
        source = gce(gce_sim, http)
        await primed(source, gce_sim)
        gce_sim.set_raw(NICS_PATH, "<html>oops</html>")
        assert await source.wait_for_change(30) is True
        with pytest.raises(MetadataError, match="not JSON"):
            await source.fetch(NIC0)
        gce_sim.set_raw(NICS_PATH, None)
        assert await source.wait_for_change(30) is True
        assert (await source.fetch(NIC0)).state is not None

    async def test_an_answer_without_an_etag_is_a_fetch_error(
        self, serve: Serve, http: HttpClient
    ) -> None:
        app = web.Application()

        async def nics(_request: web.Request) -> web.Response:
            return web.Response(text=json.dumps([nic(NIC0, 0)]))

        app.router.add_get(f"/{NICS_PATH}", nics)
        url = await serve(app)
        source = GceSource(GceConfig(endpoint=url), http)
        assert (await source.fetch(NIC0)).state is not None
        with pytest.raises(FetchError, match="no ETag"):
            await source.wait_for_change(1)

    async def test_the_service_down_is_a_fetch_error(
        self, closed_port: int, http: HttpClient
    ) -> None:
        source = GceSource(GceConfig(endpoint=f"http://127.0.0.1:{closed_port}"), http)
        with pytest.raises(FetchError, match="cannot connect"):
            await source.wait_for_change(1)

    async def test_requests_per_nic_at_rest(self, gce_sim: GceSim, http: HttpClient) -> None:
        """Four NICs re-checked together every 0.3 s over 1.5 s, the long poll open all the
        while: one document request per re-check for all four, one per long poll."""
        macs = [f"42:01:0a:80:01:{n:02x}" for n in range(1, 5)]
        for n, mac in enumerate(macs, 1):
            gce_sim.add_nic(nic(mac, n))
        source = gce(gce_sim, http)
        await asyncio.gather(*(source.fetch(mac) for mac in macs))
        await asyncio.sleep(0.05)
        gce_sim.reset_stats()
        watch = asyncio.ensure_future(source.wait_for_change(1))
        for _ in range(5):
            await asyncio.gather(*(source.fetch(mac) for mac in macs))
            await asyncio.sleep(0.3)
        assert await watch is False
        requests = nics_requests(gce_sim)
        # 5 shared re-checks, one long poll, and the priming plain request (which may have
        # served the first re-check too).
        assert len(requests) in (6, 7), requests
        assert len(requests) / len(macs) < 2
