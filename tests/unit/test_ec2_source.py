"""Ec2Source against the real IMDSv2 simulator served on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from nicreconciled.errors import FetchError, MetadataError
from nicreconciled.sim.imds import ImdsSim
from nicreconciled.sources.ec2 import Ec2Config, Ec2Source
from nicreconciled.sources.ec2_parse import MACS_DIR, mac_dir, parse_nic
from nicreconciled.sources.http import HttpClient
from tests.unit.conftest import Ec2Capture

PRIMARY = "0a:00:00:00:00:01"
MAC = "0a:00:00:00:00:02"
IPV6 = "2001:db8:11::25"


def nic(mac: str = MAC, device_number: int = 1, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "mac": mac,
        "device_number": device_number,
        "local_ipv4s": [f"10.0.{10 + device_number}.25"],
        "subnet_ipv4_cidr": f"10.0.{10 + device_number}.0/24",
    }
    return spec | extra


def source(http: HttpClient, endpoint: str, fallback: str = "", **kwargs: Any) -> Ec2Source:
    return Ec2Source(Ec2Config(endpoint=endpoint, fallback_endpoint=fallback), http, **kwargs)


def puts(sim: ImdsSim) -> int:
    return sim.by_method["PUT"]


@pytest.fixture
def ec2(sim: ImdsSim, http: HttpClient) -> Ec2Source:
    sim.add_nic(nic(PRIMARY, device_number=0))
    return source(http, sim.url)


class TestToken:
    async def test_token_is_obtained_once_and_reused(self, sim: ImdsSim, ec2: Ec2Source) -> None:
        sim.add_nic(nic())
        for _ in range(3):
            await ec2.fetch(MAC)
        assert puts(sim) == 1
        assert sim.by_status[401] == 0

    async def test_rejected_token_is_replaced_and_the_get_retried(
        self, sim: ImdsSim, ec2: Ec2Source
    ) -> None:
        sim.add_nic(nic())
        first = await ec2.fetch(MAC)
        sim.set_fault("invalidate-tokens")
        assert await ec2.fetch(MAC) == first
        assert puts(sim) == 2
        assert sim.by_status[401] == 1

    async def test_token_is_refreshed_before_it_expires(
        self, sim: ImdsSim, http: HttpClient
    ) -> None:
        now = [1000.0]
        sim.add_nic(nic(PRIMARY, device_number=0))
        ec2 = Ec2Source(
            Ec2Config(endpoint=sim.url, fallback_endpoint="", token_ttl=300),
            http,
            clock=lambda: now[0],
        )
        await ec2.list_macs()
        now[0] += 300 - 61  # more than 60 s left: keep it
        await ec2.list_macs()
        assert puts(sim) == 1
        now[0] += 2  # less than 60 s left: renew
        await ec2.list_macs()
        assert puts(sim) == 2
        assert sim.by_status[401] == 0

    async def test_token_ttl_header_is_sent(self, sim: ImdsSim, http: HttpClient) -> None:
        ec2 = Ec2Source(Ec2Config(endpoint=sim.url, fallback_endpoint="", token_ttl=60), http)
        assert await ec2.detect()
        assert sim.by_status[200] == 1

    async def test_token_refused_everywhere_is_fetch_error(
        self, sim: ImdsSim, ec2: Ec2Source
    ) -> None:
        sim.set_fault("token-fail")
        with pytest.raises(FetchError, match=r"HTTP 403 \(IMDS disabled\?\)"):
            await ec2.fetch(MAC)
        assert not await ec2.detect()

    async def test_401_after_a_fresh_token_is_fetch_error(
        self, sim: ImdsSim, ec2: Ec2Source
    ) -> None:
        sim.set_fault("401")
        with pytest.raises(FetchError, match="401 with a fresh token"):
            await ec2.list_macs()
        assert puts(sim) == 2
        assert sim.by_status[401] == 2


class TestDetect:
    async def test_detects_the_simulator(self, ec2: Ec2Source) -> None:
        assert await ec2.detect()

    async def test_refused_connection_is_false(self, http: HttpClient, closed_port: int) -> None:
        assert not await source(http, f"http://127.0.0.1:{closed_port}").detect()

    async def test_hanging_service_is_false_within_about_a_second(self, sim: ImdsSim) -> None:
        sim.set_fault("hang")
        slow_http = HttpClient(timeout=5.0)
        started = time.monotonic()
        try:
            assert not await source(slow_http, sim.url).detect()
        finally:
            await slow_http.close()
        assert time.monotonic() - started < 2.5


class TestDiscovery:
    async def test_primary_mac_is_cached(self, sim: ImdsSim, ec2: Ec2Source) -> None:
        assert await ec2.primary_mac() == PRIMARY
        before = sim.requests
        sim.set_primary(MAC)
        assert await ec2.primary_mac() == PRIMARY
        assert sim.requests == before

    async def test_list_macs(self, sim: ImdsSim, ec2: Ec2Source) -> None:
        sim.add_nic(nic())
        assert await ec2.list_macs() == {PRIMARY, MAC}

    async def test_hostile_listing_entries_are_dropped_with_a_warning(
        self, sim: ImdsSim, ec2: Ec2Source, capture: Callable[[str], Ec2Capture]
    ) -> None:
        for path, text in capture("hostile_mac_listing").answers.items():
            sim.set_raw(path, text)
        with capture_logs() as logs:
            macs = await ec2.list_macs()
        assert macs == {"0e:5c:3a:91:0b:01", "0e:5c:3a:91:0b:7f", "0e:5c:3a:91:0b:99"}
        warned = [e for e in logs if e["event"] == "imds_bad_mac_entry"]
        assert len(warned) == 6
        assert all(e["log_level"] == "warning" for e in warned)
        # Nothing was requested under a rejected name.
        assert not [p for _, _, p, _ in sim.log if ".." in p or "etc" in p]


class TestFetch:
    async def test_fetch_matches_parse_of_the_same_answers(
        self, sim: ImdsSim, ec2: Ec2Source, capture: Callable[[str], Ec2Capture]
    ) -> None:
        cap = capture("complete_eni")
        for path, text in cap.answers.items():
            sim.set_raw(path, "__404__" if text is None else text)
        sim.set_primary(cap.primary_mac)
        sim.set_raw(MACS_DIR, f"{cap.primary_mac}/\n{cap.mac}/\n")
        observation = await ec2.fetch(cap.mac)
        assert observation == parse_nic(cap.mac, cap.listing, cap.raw(), cap.primary_mac)
        assert observation.state is not None

    async def test_only_wanted_listed_keys_are_requested(
        self, sim: ImdsSim, ec2: Ec2Source
    ) -> None:
        sim.add_nic(nic())
        await ec2.primary_mac()
        sim.reset_stats()
        await ec2.fetch(MAC)
        paths = sorted(p.removeprefix("/latest/" + mac_dir(MAC)) for _, _, p, _ in sim.log)
        assert paths == sorted(
            [
                "",
                "device-number",
                "interface-id",
                "local-ipv4s",
                "subnet-ipv4-cidr-block",
                f"/latest/{MACS_DIR}",
            ]
        )

    async def test_unknown_mac_is_not_listed_by_the_shared_listing(
        self, sim: ImdsSim, ec2: Ec2Source
    ) -> None:
        sim.add_nic(nic())
        observation = await ec2.fetch("0A-00-00-00-00-99")
        assert observation.state is None
        assert observation.mac == "0a:00:00:00:00:99"
        (flag,) = observation.flags
        assert (flag.kind, flag.grace) == ("not-listed", "unlisted")
        assert flag.keys == (MACS_DIR,)
        assert observation.probe == {MACS_DIR: f"{MAC}/\n"} or MAC in observation.probe[MACS_DIR]
        assert not any(mac_dir("0a:00:00:00:00:99") in p for _, _, p, _ in sim.log)

    async def test_twenty_unlisted_nics_cost_one_listing_request(
        self, sim: ImdsSim, ec2: Ec2Source
    ) -> None:
        sim.add_nic(nic())
        await ec2.primary_mac()
        sim.reset_stats()
        foreign = [f"0a:00:00:00:01:{i:02x}" for i in range(20)]
        results = await asyncio.gather(*(ec2.fetch(m) for m in foreign))
        assert all(r.flags[0].kind == "not-listed" for r in results)
        again = await ec2.probe([MACS_DIR] * 1)
        assert MAC in (again[MACS_DIR] or "")
        assert [p for _, _, p, _ in sim.log] == [f"/latest/{MACS_DIR}"]

    async def test_a_listed_mac_whose_directory_is_404_is_flagged_so(
        self, sim: ImdsSim, http: HttpClient
    ) -> None:
        ec2 = source(http, sim.url, listing_ttl=0)  # every look asks: the listing changes
        sim.add_nic(nic())
        sim.set_raw(mac_dir(MAC), "__404__")
        observation = await ec2.fetch(MAC)
        assert observation.state is None
        assert [f.kind for f in observation.flags] == ["listed-but-404"]
        # The listing is watched too: a MAC dropping out of it ends the wait at once.
        assert observation.flags[0].keys == (MACS_DIR, mac_dir(MAC))
        sim.remove_nic(MAC)
        seen = await ec2.probe(list(observation.flags[0].keys))
        assert seen[MACS_DIR] != observation.probe[MACS_DIR]

    async def test_late_ipv6_becomes_visible_after_the_delay(
        self, sim: ImdsSim, ec2: Ec2Source
    ) -> None:
        sim.add_nic(nic(subnet_ipv6_cidrs=["2001:db8:11::/64"], schedule={"ipv6s": [[0.4, IPV6]]}))
        early = await ec2.fetch(MAC)
        assert [f.kind for f in early.flags] == ["ipv6-pending"]
        key = early.flags[0].keys[0]
        assert await ec2.probe([key]) == {key: None}
        await asyncio.sleep(0.5)
        assert await ec2.probe([key]) == {key: IPV6}
        late = await ec2.fetch(MAC)
        assert late.flags == ()
        assert late.state is not None
        assert [str(a) for a in late.state.ipv6_addresses] == [IPV6]

    async def test_listed_but_404_then_settled(self, sim: ImdsSim, ec2: Ec2Source) -> None:
        sim.add_nic(
            nic(
                listed_404=["interface-id"],
                schedule={"interface-id": [[0.3, "eni-0123456789abcdef0"]]},
            )
        )
        first = await ec2.fetch(MAC)
        assert [f.kind for f in first.flags] == ["listed-but-404"]
        await asyncio.sleep(0.4)
        second = await ec2.fetch(MAC)
        assert second.flags == ()
        assert second.state is not None
        assert second.state.interface_id == "eni-0123456789abcdef0"

    async def test_garbage_is_metadata_error(self, sim: ImdsSim, ec2: Ec2Source) -> None:
        sim.add_nic(nic(local_ipv4s=["10.0.11.300"]))
        with pytest.raises(MetadataError, match=r"^local-ipv4s: invalid entry '10\.0\.11\.300'$"):
            await ec2.fetch(MAC)

    @pytest.mark.parametrize("mode", ["5xx", "hang", "reset", "slow", "oversize"])
    async def test_service_faults_are_fetch_errors(self, sim: ImdsSim, mode: str) -> None:
        sim.add_nic(nic(PRIMARY, device_number=0))
        http = HttpClient(timeout=0.5)
        ec2 = source(http, sim.url)
        try:
            await ec2.detect()
            sim.set_fault(mode)
            with pytest.raises(FetchError):
                await ec2.fetch(PRIMARY)
        finally:
            sim.set_fault("none")
            await ec2.close()

    async def test_probe_refuses_keys_outside_the_metadata(self, ec2: Ec2Source) -> None:
        for key in ("../api/token", "meta-data/../../x", "user-data", "meta-data/a b"):
            with pytest.raises(ValueError, match="not a metadata probe key"):
                await ec2.probe([key])

    async def test_probe_returns_directory_listings(self, sim: ImdsSim, ec2: Ec2Source) -> None:
        sim.add_nic(nic())
        answer = await ec2.probe([mac_dir(MAC)])
        listing = answer[mac_dir(MAC)]
        assert listing is not None
        assert "device-number" in listing.split("\n")


class TestEndpoints:
    async def test_fallback_is_used_when_the_endpoint_refuses(
        self, sim: ImdsSim, http: HttpClient, closed_port: int
    ) -> None:
        sim.add_nic(nic(PRIMARY, device_number=0))
        sim.add_nic(nic())
        ec2 = source(http, f"http://127.0.0.1:{closed_port}", fallback=sim.url)
        with capture_logs() as logs:
            observation = await ec2.fetch(MAC)
            assert observation.state is not None
            assert ec2.endpoint == sim.url
            # Remembered: later requests go straight to the fallback.
            sent = http.requests_sent
            await ec2.fetch(MAC)
            assert http.requests_sent - sent == 5
        switches = [e for e in logs if e["event"] == "imds_endpoint_switched"]
        assert len(switches) == 1
        assert switches[0]["endpoint"] == sim.url

    async def test_http_errors_do_not_switch_endpoints(
        self, sim: ImdsSim, http: HttpClient
    ) -> None:
        other = ImdsSim()
        await other.start()
        try:
            sim.add_nic(nic(PRIMARY, device_number=0))
            ec2 = source(http, sim.url, fallback=other.url)
            assert await ec2.detect()
            sim.set_fault("5xx")
            with pytest.raises(FetchError, match="HTTP 503"):
                await ec2.list_macs()
            assert other.requests == 0
            assert ec2.endpoint == sim.url
        finally:
            await other.stop()

    async def test_both_endpoints_down_is_fetch_error(
        self, http: HttpClient, closed_port: int
    ) -> None:
        ec2 = source(
            http, f"http://127.0.0.1:{closed_port}", fallback=f"http://[::1]:{closed_port}"
        )
        with pytest.raises(FetchError, match="cannot connect"):
            await ec2.list_macs()


class TestPrediction:
    async def test_a_probe_answer_applied_to_the_last_full_read_predicts_the_state(
        self, sim: ImdsSim, ec2: Ec2Source
    ) -> None:
        sim.add_nic(nic(subnet_ipv6_cidrs=["2001:db8:11::/64"]))
        early = await ec2.fetch(MAC)
        key = early.flags[0].keys[0]
        sim.update_nic(MAC, {"ipv6s": [IPV6]})
        answers = await ec2.probe([key])
        predicted = ec2.predict(MAC, answers)
        assert predicted is not None
        assert predicted.flags == ()
        confirmed = await ec2.fetch(MAC)
        assert predicted.state == confirmed.state
        assert confirmed.state is not None
        assert [str(a) for a in confirmed.state.ipv6_addresses] == [IPV6]

    async def test_a_change_elsewhere_makes_the_full_read_differ(
        self, sim: ImdsSim, ec2: Ec2Source
    ) -> None:
        sim.add_nic(nic(subnet_ipv6_cidrs=["2001:db8:11::/64"]))
        key = (await ec2.fetch(MAC)).flags[0].keys[0]
        sim.update_nic(MAC, {"ipv6s": [IPV6], "local_ipv4s": ["10.0.11.25", "10.0.11.26"]})
        predicted = ec2.predict(MAC, await ec2.probe([key]))
        assert predicted is not None
        assert predicted.state != (await ec2.fetch(MAC)).state

    async def test_nothing_is_predicted_without_a_full_read_or_from_a_listing(
        self, sim: ImdsSim, ec2: Ec2Source
    ) -> None:
        sim.add_nic(nic())
        assert ec2.predict(MAC, {mac_dir(MAC) + "ipv6s": IPV6}) is None
        await ec2.fetch(MAC)
        assert ec2.predict(MAC, {MACS_DIR: f"{MAC}/"}) is None
        assert ec2.predict(MAC, {mac_dir(MAC): "device-number"}) is None
        assert ec2.predict(MAC, {mac_dir(PRIMARY) + "ipv6s": IPV6}) is None
        assert ec2.predict(MAC, {mac_dir(MAC) + "local-ipv4s": "garbage"}) is None


class TestListingCost:
    async def test_a_listed_nic_polled_again_costs_no_listing(
        self, sim: ImdsSim, http: HttpClient
    ) -> None:
        ec2 = source(http, sim.url, listing_ttl=0)  # any listing would be a request
        sim.add_nic(nic(PRIMARY, device_number=0))
        sim.add_nic(nic())
        await ec2.fetch(MAC)
        sim.reset_stats()
        await ec2.fetch(MAC)
        paths = [p for _, _, p, _ in sim.log]
        assert f"/latest/{MACS_DIR}" not in paths
        assert paths[0] == f"/latest/{mac_dir(MAC)}"

    async def test_a_listed_nic_gone_upstream_is_not_listed_any_more(
        self, sim: ImdsSim, http: HttpClient
    ) -> None:
        ec2 = source(http, sim.url, listing_ttl=60)  # even a fresh cached listing names it
        sim.add_nic(nic(PRIMARY, device_number=0))
        sim.add_nic(nic())
        await ec2.fetch(MAC)
        sim.remove_nic(MAC)
        gone = await ec2.fetch(MAC)
        assert gone.state is None
        assert [f.kind for f in gone.flags] == ["not-listed"]
        assert ec2.predict(MAC, {mac_dir(MAC) + "ipv6s": IPV6}) is None
