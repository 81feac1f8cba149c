"""The real daemon against a misbehaving metadata service, hostile data and a hostile disk.

Every case samples the managed files every 20 ms for the whole fault and checks that each one
is never deleted, emptied, torn or given content other than a complete render of a metadata
version the simulator actually served; that the daemon stays alive; and that a metadata change
made after the fault ends is rendered within the resync interval (2 s, +-20 % jitter) plus a
few seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from nicreconciled.sim.imds import NicSpec
from tests.integration.conftest import PRIMARY, Stack, nic_spec
from tests.integration.faultlib import (
    RESYNC,
    TEST_POLLING,
    TMP_NAME,
    Daemon,
    RssSampler,
    Sampler,
    record,
    render_spec,
    rss_kb,
    tree,
    yaml_name,
)

pytestmark = pytest.mark.integration

MAC = "0a:00:00:00:00:02"
IPV6 = "2001:db8:11::25"
V6NET = "2001:db8:11::/64"
#: How long after the fault ends a change must be on disk: the longest jittered resync, one
#: request timeout for a request still in flight, and slack for the confirming poll.
AFTER_FAULT = RESYNC * 1.2 + TEST_POLLING["request_timeout"] + 2.5
FAULT_SECONDS = 2.5


def dual_stack(mac: str = MAC, *extra_ipv4: str, device_number: int = 1) -> dict[str, Any]:
    octet = 10 + device_number
    return nic_spec(
        mac,
        device_number=device_number,
        local_ipv4s=[f"10.0.{octet}.25", *extra_ipv4],
        ipv6s=[IPV6],
        subnet_ipv6_cidrs=[V6NET],
    )


async def started(stack: Stack, specs: list[dict[str, Any]], **config: Any) -> Daemon:
    """Add SPECS to the simulator, plug a NIC for each, start a daemon, wait for every file."""
    for i, spec in enumerate(specs):
        await stack.sim.add_nic(spec)
        stack.ns.plug(f"eth{i + 1}", spec["mac"])
    daemon = Daemon(stack)
    daemon.start(**config)
    for spec in specs:
        await daemon.wait_content(spec["mac"], render_spec(spec))
    return daemon


# --- the service fails ---------------------------------------------------------------------

TRANSPORT: dict[str, tuple[str, str | None]] = {
    # mode: (what the daemon's fetch_failed error says, the simulator's status for the
    # faulty answers (0: dropped without one); None where it counts normal answers too)
    "5xx": ("HTTP 503", "503"),
    "hang": ("timeout", "0"),
    "reset": ("reset by peer", "0"),
    "slow": ("timeout", None),
    "oversize": ("oversized", None),
    "401": ("401", "401"),
    "token-fail": ("403", "403"),
}


class TestServiceFaults:
    @pytest.mark.parametrize("mode", list(TRANSPORT))
    async def test_a_fault_never_touches_the_file_and_a_later_change_is_rendered(
        self, stack: Stack, mode: str
    ) -> None:
        spec0 = dual_stack()
        spec_a = dual_stack(MAC, "10.0.11.27")
        spec_ab = dual_stack(MAC, "10.0.11.27", "10.0.11.28")
        good, text_a, text_ab = render_spec(spec0), render_spec(spec_a), render_spec(spec_ab)
        daemon = await started(stack, [spec0])
        path = daemon.file(MAC)
        rss_before = rss_kb(daemon.pid)
        error_text, status = TRANSPORT[mode]
        with Sampler(daemon.out) as sampler, RssSampler(daemon.pid) as rss:
            if mode == "token-fail":
                await stack.sim.set_fault("invalidate-tokens")  # the daemon needs a new one
            await stack.sim.reset_stats()
            fault_start = time.monotonic()
            await stack.sim.set_fault(mode, FAULT_SECONDS)
            fault_end = fault_start + FAULT_SECONDS
            # A change made during the fault must not reach the disk before the fault ends:
            # nothing may be built from a failed or partial answer.
            await stack.sim.update_nic(MAC, {"local_ipv4s": spec_a["local_ipv4s"]})
            while time.monotonic() < fault_end - 0.3:
                daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
                await asyncio.sleep(0.6)
                daemon.assert_alive()
            await asyncio.sleep(max(0.0, fault_end - time.monotonic()))
            changed_at = time.monotonic()
            await stack.sim.update_nic(MAC, {"local_ipv4s": spec_ab["local_ipv4s"]})
            seen_at = await daemon.wait_content(MAC, text_ab, timeout=AFTER_FAULT + 3)
            stats = await stack.sim.stats(log=False)
        daemon.assert_alive()
        during = sampler.check(path, {good}, since=fault_start, until=fault_end - 0.05)
        sampler.check(path, {good, text_a, text_ab})
        failures = daemon.events("fetch_failed", mac=MAC)
        assert failures, daemon.tail()
        assert any(error_text in e["error"] for e in failures), failures[-1]
        assert status is None or stats["by_status"].get(status), stats
        latency = seen_at - changed_at
        assert latency <= AFTER_FAULT, f"change rendered {latency:.1f} s after the fault"
        growth = (rss.peak - rss_before) / 1024
        assert growth < 20, f"RSS grew {growth:.1f} MB during the fault"
        record(
            f"service:{mode}",
            samples=sampler.samples,
            samples_during_fault=during,
            failed_fetches=len(failures),
            requests=stats["requests"],
            latency_after_fault=round(latency, 2),
            rss_growth_mb=round(growth, 2),
            rss_samples=rss.samples,
        )

    async def test_tokens_revoked_over_and_over_cost_one_renewal_each(self, stack: Stack) -> None:
        spec0 = dual_stack()
        spec_a = dual_stack(MAC, "10.0.11.27")
        spec_ab = dual_stack(MAC, "10.0.11.27", "10.0.11.28")
        allowed = {render_spec(s) for s in (spec0, spec_a, spec_ab)}
        daemon = await started(stack, [spec0])
        with Sampler(daemon.out) as sampler:
            await stack.sim.reset_stats()
            revocations = 0
            end = time.monotonic() + 3.0
            changed = False
            while time.monotonic() < end:
                await stack.sim.set_fault("invalidate-tokens")
                revocations += 1
                if not changed and time.monotonic() > end - 2.0:
                    await stack.sim.update_nic(MAC, {"local_ipv4s": spec_a["local_ipv4s"]})
                    changed = True
                daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
                await asyncio.sleep(0.1)
            # Revoked tokens are renewed, not a failure: the change gets through meanwhile.
            await daemon.wait_content(MAC, render_spec(spec_a), timeout=AFTER_FAULT)
            stats = await stack.sim.stats(log=False)
            changed_at = time.monotonic()
            await stack.sim.update_nic(MAC, {"local_ipv4s": spec_ab["local_ipv4s"]})
            seen = await daemon.wait_content(MAC, render_spec(spec_ab), timeout=AFTER_FAULT + 3)
        sampler.check(daemon.file(MAC), allowed)
        puts = stats["by_method"].get("PUT", 0)
        assert stats["by_status"].get("401"), stats
        # At most one renewal per revocation (with a little slack for a poll in flight).
        assert puts <= revocations + 3, (puts, revocations)
        assert seen - changed_at <= AFTER_FAULT
        record(
            "auth:tokens-revoked",
            samples=sampler.samples,
            revocations=revocations,
            token_puts=puts,
            unauthorized=stats["by_status"].get("401"),
        )


# --- propagation shapes ----------------------------------------------------------------------

PRODUCTION_POLLING = {"deadline": 60, "ipv6_grace": 10, "max_interval": 5, "request_timeout": 2}


def late_ipv6(mac: str, device_number: int, delay: float) -> tuple[dict[str, Any], list[str]]:
    """A NIC whose IPv6 address appears DELAY s after attach: (spec, [v4-only, final])."""
    octet = 10 + device_number
    v6net, v6 = f"2001:db8:{octet}::/64", f"2001:db8:{octet}::25"
    spec = nic_spec(mac, device_number, subnet_ipv6_cidrs=[v6net])
    return (
        {**spec, "schedule": {"ipv6s": [[delay, v6]]}},
        [render_spec(spec), render_spec({**spec, "ipv6s": [v6]})],
    )


class TestPropagation:
    async def test_propagation_shapes_end_in_the_complete_file_and_nothing_else(
        self, stack: Stack
    ) -> None:
        """Two daemons watch the same NICs: P with production polling and a 60 s resync (what
        it finds late, it finds by probing), R with a 2 s resync (the flapping value)."""
        prod = Daemon(stack, "prod")
        prod.start(resync_interval=60, polling=PRODUCTION_POLLING)
        quick = Daemon(stack, "quick")
        quick.start(polling=PRODUCTION_POLLING)
        await prod.wait_event("ready")
        await quick.wait_event("ready")

        cases: dict[str, tuple[dict[str, Any], list[str]]] = {}
        # Listed, but every required key answers 404 for 3 s.
        spec = nic_spec("0a:00:00:00:01:01", 1)
        keys = {"device-number": "1", "local-ipv4s": "10.0.11.25"}
        keys["subnet-ipv4-cidr-block"] = "10.0.11.0/24"
        schedule = {k: [[0, "__404__"], [3.0, v]] for k, v in keys.items()}
        cases["required-404-3s"] = ({**spec, "schedule": schedule}, [render_spec(spec)])
        # ipv6s listed but 404 for 4 s: the first file already has the address.
        spec = nic_spec("0a:00:00:00:01:02", 2, ipv6s=["2001:db8:12::25"])
        spec["subnet_ipv6_cidrs"] = ["2001:db8:12::/64"]
        schedule = {"ipv6s": [[0, "__404__"], [4.0, "2001:db8:12::25"]]}
        cases["ipv6s-404-4s"] = ({**spec, "schedule": schedule}, [render_spec(spec)])
        # device-number reads 0 for 2.5 s, then 3: no file ever numbers it 0.
        spec = nic_spec("0a:00:00:00:01:03", 3)
        schedule = {"device-number": [[0, "0"], [2.5, "3"]]}
        cases["device-number-0"] = ({**spec, "schedule": schedule}, [render_spec(spec)])
        # IPv6 1 s late, well inside the 10 s grace: the first file already has it.
        spec, texts = late_ipv6("0a:00:00:00:01:04", 4, 1.0)
        cases["ipv6-after-1s"] = (spec, texts[-1:])
        cases["ipv6-after-10s"] = late_ipv6("0a:00:00:00:01:05", 5, 10.0)
        cases["ipv6-after-45s"] = late_ipv6("0a:00:00:00:01:06", 6, 45.0)
        # local-ipv4s flaps between one and two addresses every 0.3 s for 6 s, ends on two.
        spec = nic_spec("0a:00:00:00:01:07", 7)
        two = {**spec, "local_ipv4s": ["10.0.17.25", "10.0.17.26"]}
        flips = [[0.3 * k, "10.0.17.25\n10.0.17.26" if k % 2 else "10.0.17.25"] for k in range(20)]
        flips.append([6.0, "10.0.17.25\n10.0.17.26"])
        cases["flapping-6s"] = (
            {**spec, "schedule": {"local-ipv4s": flips}},
            [render_spec(spec), render_spec(two)],
        )

        added: dict[str, float] = {}
        with Sampler(prod.out, quick.out) as sampler:
            for i, (name, (spec, _texts)) in enumerate(cases.items()):
                await stack.sim.add_nic(spec)
                added[name] = time.monotonic()
                stack.ns.plug(f"eth{i + 1}", spec["mac"])
            first = {name: 0.0 for name in cases}
            final_at: dict[tuple[str, str], float] = {}

            def settled() -> bool:
                for name, (spec, texts) in cases.items():
                    for daemon in (prod, quick):
                        path = daemon.file(spec["mac"])
                        if daemon is prod and name == "flapping-6s":
                            continue  # settles at P's next resync, a minute later
                        if (name, daemon.name) not in final_at:
                            try:
                                text = path.read_text()
                            except FileNotFoundError:
                                continue
                            if daemon is prod and not first[name]:
                                first[name] = time.monotonic()
                            if text == texts[-1]:
                                final_at[name, daemon.name] = time.monotonic()
                return len(final_at) == 2 * len(cases) - 1

            await prod.until(settled, 60, "every NIC's final file")
            quick.assert_alive()

        checked = 0
        for spec, texts in cases.values():
            for daemon in (prod, quick):
                checked += sampler.check(daemon.file(spec["mac"]), texts, absent="before")

        def latency(name: str, who: Daemon) -> float:
            return final_at[name, who.name] - added[name]

        assert latency("required-404-3s", prod) <= 3.0 + 2.0
        assert latency("ipv6s-404-4s", prod) <= 4.0 + 2.0
        assert latency("device-number-0", prod) <= 2.5 + 2.0
        assert first["ipv6-after-1s"] - added["ipv6-after-1s"] <= 1.0 + 2.0
        # Found by probing (P resyncs once a minute): within max_interval (+10 % jitter).
        assert latency("ipv6-after-10s", prod) <= 10.0 + 5.5 + 1.5
        assert latency("ipv6-after-45s", prod) <= 45.0 + 5.5 + 1.5
        assert latency("flapping-6s", quick) <= 6.0 + RESYNC * 1.2 + 3.0
        record(
            "propagation",
            cases=len(cases),
            daemons=2,
            samples=sampler.samples,
            file_samples=checked,
            latency={f"{n}/{d}": round(t - added[n], 2) for (n, d), t in final_at.items()},
            ipv6_10s_first_file_complete=(
                sampler.contents(prod.file(cases["ipv6-after-10s"][0]["mac"]))[1:2]
                == [cases["ipv6-after-10s"][1][1].encode()]
            ),
        )


# --- garbage and hostile data -----------------------------------------------------------------

MACS_DIR = "meta-data/network/interfaces/macs/"


def garbage_cases() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """name -> (good spec, garbage changes); each NIC is fixed afterwards with one more IPv4."""
    many = [f"10.0.{16 + i // 250}.{i % 250 + 1}" for i in range(3000)]
    return {
        "invalid-ipv4": (nic_spec("0a:00:00:00:02:01", 1), {"local_ipv4s": ["10.0.11.300"]}),
        "invalid-ipv6": (
            dual_stack("0a:00:00:00:02:02", device_number=2),
            {"ipv6s": ["2001:db8:11::zz"]},
        ),
        "invalid-cidr": (nic_spec("0a:00:00:00:02:03", 3), {"subnet_ipv4_cidr": "10.0.13.0/33"}),
        "newline-in-value": (
            nic_spec("0a:00:00:00:02:04", 4),
            {"interface_id": "eni-0123456789abcdef0\nrenderer: NetworkManager"},
        ),
        "nul-in-value": (nic_spec("0a:00:00:00:02:05", 5), {"local_ipv4s": ["10.0.15.25\x00"]}),
        "3000-ipv4s": (nic_spec("0a:00:00:00:02:06", 6), {"local_ipv4s": many}),
        "3000-ipv6s": (
            dual_stack("0a:00:00:00:02:07", device_number=7),
            {"ipv6s": [f"2001:db8:11::{i:x}" for i in range(1, 3001)]},
        ),
        "hostile-key-listing": (nic_spec("0a:00:00:00:02:08", 8), {}),
    }


class TestHostileData:
    async def test_garbage_is_never_written_and_never_names_a_path(self, stack: Stack) -> None:
        cases = garbage_cases()
        fresh = nic_spec("0a:00:00:00:02:09", 9)  # garbage from its very first answer
        await stack.sim.add_nic({**fresh, "local_ipv4s": ["999.1.1.1"]})
        stack.ns.plug("eth9", fresh["mac"])
        daemon = await started(stack, [good for good, _bad in cases.values()])
        defaults = NicSpec.model_fields
        fixed = {
            name: {
                **{k: defaults[k].get_default(call_default_factory=True) for k in bad},
                **good,
                "local_ipv4s": [*good["local_ipv4s"], f"10.0.{11 + i}.40"],
            }
            for i, (name, (good, bad)) in enumerate(cases.items())
        }
        fixed["garbage-from-attach"] = fresh
        allowed = {
            name: {render_spec(good), render_spec(fixed[name])}
            for name, (good, _b) in cases.items()
        }
        with Sampler(daemon.out) as sampler:
            await stack.sim.reset_stats()
            t0 = time.monotonic()
            for good, bad in cases.values():
                if bad:
                    await stack.sim.update_nic(good["mac"], bad)
            listing_path = f"{MACS_DIR}{cases['hostile-key-listing'][0]['mac']}/"
            listing = "\n".join(
                sorted(["device-number", "local-ipv4s", "subnet-ipv4-cidr-block", "mac"])
            )
            hostile = ["../../../etc/passwd", "../", "local-ipv4s/../../../../tmp/x", "/etc/"]
            await stack.sim.set_raw(listing_path, listing + "\n" + "\n".join(hostile))
            macs = [spec["mac"] for spec, _bad in cases.values()] + [fresh["mac"], PRIMARY]
            await stack.sim.set_raw(
                MACS_DIR, "\n".join([*(f"{m}/" for m in macs), "../../etc/", "..", "/etc/"])
            )
            daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            for good, bad in cases.values():
                if bad:
                    await daemon.wait_event("metadata_invalid", mac=good["mac"], timeout=6)
            await asyncio.sleep(max(0.0, t0 + RESYNC * 1.2 + 0.5 - time.monotonic()))
            garbage_end = time.monotonic()
            served = (await stack.sim.stats())["log"]
            for name, (good, _bad) in cases.items():
                await stack.sim.update_nic(good["mac"], fixed[name])
            await stack.sim.update_nic(fresh["mac"], {"local_ipv4s": fresh["local_ipv4s"]})
            await stack.sim.set_raw(listing_path, None)
            fixed_at = time.monotonic()
            for spec in fixed.values():
                await daemon.wait_content(spec["mac"], render_spec(spec), timeout=AFTER_FAULT)
            latency = time.monotonic() - fixed_at
        daemon.assert_alive()
        assert daemon.stop() == 0  # no write in flight while the tree is listed
        during = 0
        for name, (good, _bad) in cases.items():
            during += sampler.check(
                daemon.file(good["mac"]), {render_spec(good)}, until=garbage_end
            )
            sampler.check(daemon.file(good["mac"]), allowed[name])
        path = daemon.file(fresh["mac"])
        sampler.check(path, set(), until=garbage_end, absent="any")
        sampler.check(path, {render_spec(fresh)}, absent="before")
        # The hostile listing was read (and ignored: the file above never changed).
        assert any(r["path"] == f"/latest/{listing_path}" and r["status"] == 200 for r in served)
        errors = {e["mac"]: e["error"] for e in daemon.events("metadata_invalid")}
        assert "control character" in errors[cases["nul-in-value"][0]["mac"]]
        assert "more than" in errors[cases["3000-ipv4s"][0]["mac"]]
        # Nothing anywhere but our own files, under our own names.
        macs_here = [spec["mac"] for spec in fixed.values()]
        expected = {"out/", "state/", "state/nics/", "daemon.log", "nicreconciled.toml"}
        expected.add("state/daemon.json")  # the daemon's own phase (status prints it)
        expected |= {f"out/{yaml_name(m)}" for m in macs_here}
        expected |= {f"state/nics/{m.replace(':', '')}.json" for m in macs_here}
        assert tree(daemon.home) == expected
        assert sampler.names(daemon.out) == {yaml_name(m) for m in macs_here}
        assert not sampler.tmp_names - {n for n in sampler.tmp_names if TMP_NAME.fullmatch(n)}
        record(
            "hostile-data",
            cases=len(cases) + 1,
            samples=sampler.samples,
            file_samples_during_garbage=during,
            latency_after_fix=round(latency, 2),
        )


# --- the metadata service is unreachable at start ---------------------------------------------


class TestUnreachableAtStart:
    OUTAGE = 15.0  # the issue says 2 minutes; 15 s keeps the suite fast (same code path)

    async def test_a_nic_is_configured_when_the_service_comes_back_without_a_restart(
        self, stack: Stack
    ) -> None:
        """The namespace's loopback is down: requests to the service time out, as to a
        link-local address that is not routable yet. Daemon E has cloud = "ec2", daemon A
        the default cloud = "auto" (it must first detect the cloud)."""
        spec = dual_stack()
        await stack.sim.add_nic(spec)
        stack.ns.plug("eth1", MAC)
        stack.ns.ip("link", "set", "lo", "down")
        explicit = Daemon(stack, "ec2")
        explicit.start()
        auto = Daemon(stack, "auto")
        auto.start(cloud="auto")
        down_at = time.monotonic()
        text = render_spec(spec)
        with Sampler(explicit.out, auto.out) as sampler:
            while time.monotonic() < down_at + self.OUTAGE:
                explicit.assert_alive()
                auto.assert_alive()
                await asyncio.sleep(0.2)
            assert explicit.events("fetch_failed", mac=MAC)
            assert auto.events("no_cloud_detected")
            stack.ns.ip("link", "set", "lo", "up")
            up_at = time.monotonic()
            explicit_at = await explicit.wait_content(MAC, text, timeout=AFTER_FAULT)
            # Cloud detection backs off up to 60 s between rounds (sources.select_source).
            auto_at = await auto.wait_content(MAC, text, timeout=self.OUTAGE + 10)
        for daemon in (explicit, auto):
            sampler.check(daemon.file(MAC), set(), until=up_at, absent="any")
            sampler.check(daemon.file(MAC), {text}, absent="before")
        assert explicit_at - up_at <= AFTER_FAULT
        record(
            "unreachable-at-start",
            outage_s=self.OUTAGE,
            samples=sampler.samples,
            ec2_latency=round(explicit_at - up_at, 2),
            auto_latency=round(auto_at - up_at, 2),
        )


# --- a hostile or broken filesystem ------------------------------------------------------------

OLD = 1_600_000_000_000_000_000  # ns: 2020-09-13, an mtime the daemon cannot produce


def fingerprint_file(path: Path) -> tuple[bytes, int, int, int]:
    st = path.lstat()
    return path.read_bytes(), st.st_mtime_ns, st.st_ino, st.st_mode


class TestFilesystem:
    async def test_a_file_swapped_for_a_symlink_is_refused_and_its_target_untouched(
        self, stack: Stack
    ) -> None:
        spec = dual_stack()
        daemon = await started(stack, [spec])
        # The NIC's file becomes a symlink to a precious file, atomically, while it runs.
        precious = stack.tmp / "precious.conf"
        precious.write_text("do not touch\n")
        os.utime(precious, ns=(OLD, OLD))
        before = fingerprint_file(precious)
        link = daemon.out / "swap.tmp"
        link.symlink_to(precious)
        os.replace(link, daemon.file(MAC))
        # A second NIC's name is a dangling symlink: following it would create the target.
        mac2 = "0a:00:00:00:00:03"
        spec2 = nic_spec(mac2, device_number=2)
        decoy = stack.tmp / "created-by-following.yaml"
        daemon.file(mac2).symlink_to(decoy)
        with Sampler(daemon.out) as sampler:
            await stack.sim.update_nic(MAC, {"local_ipv4s": ["10.0.11.25", "10.0.11.27"]})
            await stack.sim.add_nic(spec2)
            stack.ns.plug("eth2", mac2)
            daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            await daemon.wait_event("write_failed", mac=MAC)
            await daemon.wait_event("write_failed", mac=mac2)
            await asyncio.sleep(RESYNC * 1.2 + 0.5)  # at least one retry each
            rows = await asyncio.to_thread(daemon.status_json)
            # Detach the first NIC: removing its "file" must refuse the symlink as well.
            stack.ns.unplug("eth1")
            await stack.sim.remove_nic(MAC)
            await daemon.until(
                lambda: any("remove" in e["error"] for e in daemon.events("write_failed", mac=MAC)),
                10,
                "a refused removal",
            )
        daemon.assert_alive()
        assert fingerprint_file(precious) == before
        assert not decoy.exists()
        assert not decoy.is_symlink()
        assert os.readlink(daemon.file(MAC)) == str(precious)
        assert os.readlink(daemon.file(mac2)) == str(decoy)
        for mac, target in ((MAC, precious), (mac2, decoy)):
            assert "symlink" in rows[mac]["last_error"], rows[mac]
            contents = sampler.contents(daemon.file(mac))
            assert contents == [("symlink", str(target))], contents
        errors = {e["error"] for e in daemon.events("write_failed")}
        assert len(daemon.events("write_failed", mac=mac2)) <= 10  # backed off, not a spin
        assert sampler.names(daemon.out) == {yaml_name(MAC), yaml_name(mac2)}
        record("fs:symlink", samples=sampler.samples, refusals=len(daemon.events("write_failed")))
        assert errors

    async def test_foreign_files_in_output_dir_are_never_touched(self, stack: Stack) -> None:
        out = stack.tmp / "d" / "out"
        out.mkdir(parents=True)
        foreign = {
            "50-cloud-init.yaml": "network: {version: 2}\n",
            "99-local.yaml": "network:\n  version: 2\n",
            "90-nicreconciled-custom.yaml": "# an admin's, not a MAC key\n",
            "90-nicreconciled-0a0000000002.yaml.bak": "backup\n",
            "90-nicreconciled-0a0000000002.yml": "other suffix\n",
            "notes.tmp": "someone else's temp file\n",
            "README": "hands off\n",
        }
        for name, text in foreign.items():
            (out / name).write_text(text)
        (out / "sub").mkdir()
        (out / "sub" / "90-nicreconciled-0a0000000009.yaml").write_text("nested\n")
        for path in [*out.iterdir(), out / "sub" / "90-nicreconciled-0a0000000009.yaml"]:
            os.utime(path, ns=(OLD, OLD), follow_symlinks=False)
        before = {p: fingerprint_file(p) for p in out.rglob("*") if p.is_file()}
        mac2 = "0a:00:00:00:00:03"
        spec, spec2 = dual_stack(), nic_spec(mac2, device_number=2)
        with Sampler(out, out / "sub") as sampler:
            daemon = await started(stack, [spec, spec2])
            # A change, a detach (its file goes), a restart (the start-up sweep runs again).
            await stack.sim.update_nic(MAC, {"local_ipv4s": ["10.0.11.25", "10.0.11.27"]})
            daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            stack.ns.unplug("eth2")
            await stack.sim.remove_nic(mac2)
            await daemon.until(lambda: not daemon.file(mac2).exists(), 10, "the detached file gone")
            await daemon.wait_content(
                MAC, render_spec({**spec, "local_ipv4s": ["10.0.11.25", "10.0.11.27"]})
            )
            daemon.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            assert await asyncio.to_thread(daemon.proc.wait, 10) == 0  # type: ignore[union-attr]
            daemon.start()
            await daemon.wait_event("ready")
            await asyncio.sleep(1.0)
        daemon.assert_alive()
        after = {p: fingerprint_file(p) for p in out.rglob("*") if p.is_file() and p in before}
        assert after == before
        for path in before:
            if path.parent == out:
                sampler.check(path, {before[path][0].decode()})
        expected = {*foreign, "sub", yaml_name(MAC), yaml_name(mac2)} - {"notes.tmp"}
        assert sampler.names(out) == expected
        assert "notes.tmp" in sampler.tmp_names
        record("fs:foreign-files", files=len(before), samples=sampler.samples)

    async def test_a_foreign_file_named_like_our_prefix_and_tmp_is_kept(self, stack: Stack) -> None:
        out = stack.tmp / "d" / "out"
        out.mkdir(parents=True)
        notes = out / "90-nicreconciled-notes.tmp"
        notes.write_text("an admin's scratch file\n")
        daemon = Daemon(stack)
        daemon.start()
        await daemon.wait_event("ready")
        assert notes.exists(), "removed by the daemon at start"

    async def test_a_read_only_output_dir_is_an_error_retried_with_backoff(
        self, stack: Stack
    ) -> None:
        """Root ignores permission bits, so output_dir is a read-only bind mount, made in the
        daemon's own mount namespace; the test later remounts it read-write in there."""
        daemon = Daemon(stack)
        daemon.out.mkdir(parents=True)
        bind = 'mount --bind -o ro "$0" "$0" && exec "$@"'
        spec = dual_stack()
        await stack.sim.add_nic(spec)
        stack.ns.plug("eth1", MAC)
        with Sampler(daemon.out) as sampler:
            daemon.start(wrapper=["unshare", "--mount", "sh", "-c", bind, str(daemon.out)])
            first = await daemon.wait_event("write_failed", mac=MAC)
            await asyncio.sleep(6.0)
            daemon.assert_alive()
            failures = daemon.events("write_failed", mac=MAC)
            rows = await asyncio.to_thread(daemon.status_json)
            # Now make it writable again, inside the daemon's namespace: the file follows
            # without a restart.
            done = subprocess.run(
                [
                    "nsenter",
                    "-t",
                    str(daemon.pid),
                    "-m",
                    "mount",
                    "-o",
                    "remount,bind,rw",
                    str(daemon.out),
                ],
                capture_output=True,
                text=True,
                timeout=10,
            )
            assert done.returncode == 0, done.stderr
            remounted = time.monotonic()
            seen = await daemon.wait_content(MAC, render_spec(spec), timeout=AFTER_FAULT)
        assert daemon.stop() == 0  # no write in flight while the tree is listed
        assert "Read-only file system" in first["error"]
        assert "Read-only file system" in rows[MAC]["last_error"]
        times = [e["timestamp"] for e in failures]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # 0.1, 0.2, 0.4, 0.8, 1.6, 2 ... (polling.initial_interval doubling up to the resync
        # interval, jittered): a handful in 6 s, not a spin, never faster than the first retry.
        assert 3 <= len(failures) <= 12, gaps
        assert all(g >= 0.08 for g in gaps), gaps
        assert gaps[-1] >= 1.0, gaps
        # Nothing was written anywhere else meanwhile.
        expected = {"out/", "state/", "state/nics/", "daemon.log", "nicreconciled.toml"}
        expected.add("state/daemon.json")  # the daemon's own phase (status prints it)
        expected |= {f"out/{yaml_name(MAC)}", f"state/nics/{MAC.replace(':', '')}.json"}
        assert tree(daemon.home) == expected
        sampler.check(daemon.file(MAC), set(), until=remounted, absent="any")
        record(
            "fs:read-only",
            failures=len(failures),
            gaps=[round(g, 2) for g in gaps],
            latency_after_rw=round(seen - remounted, 2),
            samples=sampler.samples,
        )


# --- the service manager -----------------------------------------------------------------------


class TestServiceManager:
    async def test_a_slow_reader_of_notifications_does_not_freeze_the_daemon(
        self, stack: Stack
    ) -> None:
        """systemd reads its notify socket from its own event loop; while PID 1 is busy
        (boot, daemon-reload) datagrams queue up. Here nobody reads at all."""
        path = stack.tmp / "notify.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unread:
            unread.bind(str(path))
            daemon = Daemon(stack)
            daemon.start(env={"NOTIFY_SOCKET": str(path)})
            await daemon.wait_event("ready")
            specs = [nic_spec(f"0a:00:00:00:05:{i:02x}", device_number=i) for i in range(1, 9)]
            for i, spec in enumerate(specs):
                await stack.sim.add_nic(spec)
                stack.ns.plug(f"eth{i + 1}", spec["mac"])
            end = time.monotonic() + 6
            for spec in specs:
                left = max(0.1, end - time.monotonic())
                await daemon.wait_content(spec["mac"], render_spec(spec), timeout=left)
