"""The real daemon process, real kernel uevents (veth in a test netns), the IMDS simulator."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

import pytest
import yaml

from tests.conftest import PYTHON, require_tool
from tests.integration.conftest import Stack, nic_spec

pytestmark = pytest.mark.integration

MAC = "0a:00:00:00:00:02"
MAC2 = "0a:00:00:00:00:03"
IPV6 = "2001:db8:11::25"


def netplan_ok(stack: Stack) -> None:
    """Every file we wrote is accepted by the real netplan generator."""
    netplan = require_tool("netplan")
    root = stack.tmp / "root"
    etc = root / "etc/netplan"
    etc.mkdir(parents=True, exist_ok=True)
    for f in stack.out.glob("*.yaml"):
        (etc / f.name).write_bytes(f.read_bytes())
        (etc / f.name).chmod(0o600)
    done = subprocess.run(
        [netplan, "generate", "--root-dir", str(root)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "Permissions" not in done.stderr


def ethernet(text: str) -> dict[str, object]:
    doc = yaml.safe_load(text)
    (eth,) = doc["network"]["ethernets"].values()
    return eth  # type: ignore[no-any-return]


class TestHotplug:
    async def test_late_ipv6_is_in_the_first_and_only_file_written(self, stack: Stack) -> None:
        stack.start()
        await stack.wait_event("ready")
        await stack.sim.add_nic(
            nic_spec(
                MAC,
                subnet_ipv6_cidrs=["2001:db8:11::/64"],
                schedule={"ipv6s": [[3.0, IPV6]]},
            )
        )
        stack.ns.plug("eth1", MAC)
        plugged = time.monotonic()
        text = await stack.wait_file(MAC, IPV6, timeout=15)
        assert time.monotonic() - plugged >= 3.0
        eth = ethernet(text)
        assert eth["match"] == {"macaddress": MAC}
        assert eth["dhcp4"] is True
        assert eth["dhcp6"] is True
        assert f"{IPV6}/64" in eth["addresses"]  # type: ignore[operator]
        await asyncio.sleep(1.0)
        assert len(stack.events("rendered", mac=MAC)) == 1
        assert stack.file_for(MAC).stat().st_mode & 0o777 == 0o600
        netplan_ok(stack)

    async def test_a_nic_present_before_start_is_configured(self, stack: Stack) -> None:
        await stack.sim.add_nic(nic_spec(MAC))
        stack.ns.plug("eth1", MAC)
        stack.start()
        text = await stack.wait_file(MAC, "10.0.11.0/24")
        assert ethernet(text)["routing-policy"]
        netplan_ok(stack)

    async def test_a_nic_the_metadata_does_not_know_gets_no_file(self, stack: Stack) -> None:
        stack.start(polling={"deadline": 2})
        await stack.wait_event("ready")
        stack.ns.plug("eth9", "0a:00:00:00:00:99")
        await stack.wait_event("accepted", mac="0a:00:00:00:00:99", timeout=10)
        assert list(stack.out.glob("*.yaml")) == []

    async def test_the_primary_nic_is_left_alone(self, stack: Stack) -> None:
        stack.ns.plug("eth0", "0a:00:00:00:00:01")
        stack.start()
        await stack.wait_event("accepted", mac="0a:00:00:00:00:01")
        assert list(stack.out.glob("*.yaml")) == []


class TestKeepingItTrue:
    async def test_sighup_picks_up_a_new_secondary_address_at_once(self, stack: Stack) -> None:
        await stack.sim.add_nic(nic_spec(MAC))
        stack.ns.plug("eth1", MAC)
        stack.start()
        await stack.wait_file(MAC, "10.0.11.0/24")
        await stack.sim.update_nic(MAC, {"local_ipv4s": ["10.0.11.25", "10.0.11.26"]})
        stack.daemon.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        text = await stack.wait_file(MAC, "10.0.11.26/24", timeout=5)
        assert "10.0.11.26/24" in ethernet(text)["addresses"]  # type: ignore[operator]
        netplan_ok(stack)

    async def test_the_periodic_resync_picks_up_a_change_without_a_signal(
        self, stack: Stack
    ) -> None:
        await stack.sim.add_nic(nic_spec(MAC))
        stack.ns.plug("eth1", MAC)
        stack.start(resync_interval=1)
        await stack.wait_file(MAC, "10.0.11.0/24")
        await stack.sim.update_nic(
            MAC, {"ipv6s": [IPV6], "subnet_ipv6_cidrs": ["2001:db8:11::/64"]}
        )
        await stack.wait_file(MAC, IPV6, timeout=8)

    async def test_a_detached_nic_loses_its_file_and_others_keep_theirs(self, stack: Stack) -> None:
        await stack.sim.add_nic(nic_spec(MAC))
        await stack.sim.add_nic(nic_spec(MAC2, device_number=2))
        stack.ns.plug("eth1", MAC)
        stack.ns.plug("eth2", MAC2)
        foreign = stack.out / "50-cloud-init.yaml"
        stack.out.mkdir()
        foreign.write_text("network: {version: 2}\n")
        stack.start()
        await stack.wait_file(MAC)
        await stack.wait_file(MAC2)
        stack.ns.unplug("eth1")
        await stack.sim.remove_nic(MAC)
        await stack.wait_gone(MAC)
        assert stack.file_for(MAC2).exists()
        assert foreign.read_text() == "network: {version: 2}\n"

    async def test_a_file_left_by_a_nic_detached_while_stopped_is_removed(
        self, stack: Stack
    ) -> None:
        stack.out.mkdir()
        stale = stack.file_for(MAC)
        stale.write_text("network: {version: 2}\n")
        stack.start()
        await stack.wait_gone(MAC)


class TestFaults:
    @pytest.mark.parametrize("mode", ["5xx", "hang", "reset", "401", "token-fail", "oversize"])
    async def test_a_failing_service_never_changes_the_file(self, stack: Stack, mode: str) -> None:
        await stack.sim.add_nic(nic_spec(MAC, ipv6s=[IPV6], subnet_ipv6_cidrs=["2001:db8:11::/64"]))
        stack.ns.plug("eth1", MAC)
        stack.start(resync_interval=1, polling={"request_timeout": 0.5})
        good = await stack.wait_file(MAC, IPV6)
        if mode == "token-fail":
            await stack.sim.set_fault("invalidate-tokens")  # force the daemon to need a new one
        await stack.sim.set_fault(mode, 4.0)
        await stack.sim.update_nic(MAC, {"local_ipv4s": ["10.0.11.25", "10.0.11.27"]})
        stack.daemon.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        end = time.monotonic() + 3.5
        while time.monotonic() < end:
            assert stack.file_for(MAC).read_text() == good
            stack.assert_alive()
            await asyncio.sleep(0.05)
        assert stack.events("fetch_failed", mac=MAC)
        await stack.wait_file(MAC, "10.0.11.27/24", timeout=10)

    async def test_a_detach_during_an_outage_waits_for_the_metadata_to_say_so(
        self, stack: Stack
    ) -> None:
        await stack.sim.add_nic(nic_spec(MAC))
        stack.ns.plug("eth1", MAC)
        stack.start(polling={"request_timeout": 0.5})
        good = await stack.wait_file(MAC)
        await stack.sim.set_fault("5xx")
        await stack.sim.remove_nic(MAC)
        stack.ns.unplug("eth1")
        await stack.wait_event("nic_removed", mac=MAC)
        await asyncio.sleep(2.0)
        assert stack.file_for(MAC).read_text() == good  # a 503 is not "gone"
        await stack.sim.set_fault("none")
        await stack.wait_gone(MAC, timeout=10)

    async def test_garbage_metadata_keeps_the_last_good_file(self, stack: Stack) -> None:
        await stack.sim.add_nic(nic_spec(MAC))
        stack.ns.plug("eth1", MAC)
        stack.start(resync_interval=1)
        good = await stack.wait_file(MAC, "10.0.11.0/24")
        await stack.sim.update_nic(MAC, {"local_ipv4s": ["10.0.11.300"]})
        await stack.wait_event("metadata_invalid", mac=MAC, timeout=5)
        assert stack.file_for(MAC).read_text() == good
        await stack.sim.update_nic(MAC, {"local_ipv4s": ["10.0.11.25", "10.0.11.28"]})
        await stack.wait_file(MAC, "10.0.11.28/24", timeout=8)


class TestApply:
    async def test_a_change_reloads_only_that_nic(self, stack: Stack, fakebin: object) -> None:
        await stack.sim.add_nic(nic_spec(MAC))
        stack.ns.plug("eth1", MAC)
        stack.start(apply=True)
        await stack.wait_event("applied", mac=MAC)
        calls = stack.apply_log.read_text().splitlines()
        # Generated in a scratch tree (only our NIC's output is installed), one reload; the
        # kernel side of this is proved on a real networkd in tests/integration/lab.
        assert calls[0].startswith("netplan-generate --root-dir /")
        assert calls[1:] == ["networkctl reload"]

    async def test_a_failing_apply_is_retried_and_not_fatal(
        self, stack: Stack, fakebin: object, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("NICR_FAKE_EXIT", "1")
        await stack.sim.add_nic(nic_spec(MAC))
        stack.ns.plug("eth1", MAC)
        stack.start(apply=True)
        await stack.wait_event("apply_failed", mac=MAC)
        await asyncio.sleep(1.0)
        assert len(stack.apply_log.read_text().splitlines()) >= 2  # tried again
        stack.assert_alive()


class TestCommands:
    async def test_sigterm_exits_zero_within_five_seconds(self, stack: Stack) -> None:
        stack.start()
        await stack.wait_event("ready")
        started = time.monotonic()
        assert stack.stop(signal.SIGTERM, timeout=5) == 0
        assert time.monotonic() - started < 5

    async def test_once_converges_and_exits_zero(self, stack: Stack) -> None:
        await stack.sim.add_nic(nic_spec(MAC))
        stack.ns.plug("eth1", MAC)
        proc = stack.start("once")
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert stack.file_for(MAC).exists()

    async def test_once_exits_one_when_the_metadata_never_answers(self, stack: Stack) -> None:
        stack.ns.plug("eth1", MAC)
        await stack.sim.set_fault("5xx")
        proc = stack.start("once", polling={"deadline": 2})
        assert await asyncio.to_thread(proc.wait, 30) == 1
        assert not stack.file_for(MAC).exists()

    async def test_status_reports_each_nic_from_the_state_dir(self, stack: Stack) -> None:
        await stack.sim.add_nic(nic_spec(MAC))
        stack.ns.plug("eth1", MAC)
        stack.start()
        await stack.wait_file(MAC)
        await stack.wait_event("accepted", mac=MAC)
        await asyncio.sleep(0.3)
        cfg = stack.tmp / "nicreconciled.toml"
        done = subprocess.run(
            [PYTHON, "-m", "nicreconciled", "--config", str(cfg), "status", "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        rows = {r["mac"]: r for r in json.loads(done.stdout)}
        assert rows[MAC]["phase"] == "converged"
        assert rows[MAC]["ifname"] == "eth1"
        assert rows[MAC]["managed"] == "managed"
        assert rows[MAC]["fingerprint"]
        table = subprocess.run(
            [PYTHON, "-m", "nicreconciled", "--config", str(cfg), "status"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert MAC in table
        assert "converged" in table

    async def test_render_prints_and_writes_nothing(self, stack: Stack) -> None:
        await stack.sim.add_nic(nic_spec(MAC))
        cfg = stack.write_config()
        done = stack.ns.run(
            [PYTHON, "-m", "nicreconciled", "--config", str(cfg), "render", "--mac", MAC],
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert "90-nicreconciled-0a0000000002.yaml" in done.stdout
        assert "macaddress: 0a:00:00:00:00:02" in done.stdout
        assert not stack.out.exists()

    def test_a_bad_config_exits_2_with_one_line_and_writes_nothing(self, tmp_path: object) -> None:
        from pathlib import Path

        base = Path(str(tmp_path))
        cfg = base / "bad.toml"
        cfg.write_text(f'output_dir = "{base}/out"\nstate_dir = "{base}/st"\nrsync_interval = 5\n')
        done = subprocess.run(
            [PYTHON, "-m", "nicreconciled", "--config", str(cfg), "run"],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2
        assert done.stderr.strip().count("\n") == 0
        assert "rsync_interval: unknown key" in done.stderr
        assert not (base / "out").exists()
        assert not (base / "st").exists()
