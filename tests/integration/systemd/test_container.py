"""The shipped unit, installed from the .deb, under a real systemd (PID 1 of a container).

What only a booted systemd shows: Type=notify start-up (``systemctl start`` waits for
READY=1), STATUS= in ``systemctl status``, reload over SIGHUP (RELOADING=1 ... READY=1), the
watchdog petted by the event loop and a stalled loop killed and restarted, a clean stop,
the journal's structured fields, the real sandbox (ProtectSystem=strict with its write
exceptions, IPAddressDeny= as BPF on the unit's cgroup), systemd's own exposure score, and
NICs applied through the real systemd-networkd and NetworkManager inside that sandbox, and
kept there: deleted rules healed over rtnetlink from inside the confinement, another
program's rule left alone by networkd (the package's networkd.conf.d drop-in, read after
postinst restarted networkd).

The tests share one container (module scope) and run in file order; each one first puts the
daemon in the state it needs (``Booted.ensure``), so any one can also run alone.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from nicreconciled.sim.client import SimClient
from nicreconciled.sim.openstack import OpenStackSim
from tests import sdcontainer
from tests.conftest import wait_for
from tests.integration.systemd.conftest import PRIMARY, Booted, Nic
from tests.sdcontainer import CONFIG, UNIT, VENV_PYTHON, daemon_config

pytestmark = pytest.mark.integration

NETWORKD_NIC = Nic("0a:00:00:00:01:01", 1)
NM_NIC = Nic("0a:00:00:00:02:02", 2)
#: Hot-plugged while another program's policy routing is in place (TestForeignRouting).
FOREIGN_TEST_NIC = Nic("0a:00:00:00:04:04", 4)
STATUS = re.compile(r"\d+ NICs \(\d+ managed\): \d+ converged, \d+ waiting, \d+ failing")
STALL = Path(__file__).with_name("stall.py")
#: TEST-NET-3 (RFC 5737): never routed anywhere; inside the container it is routed to lo, so
#: that the kernel gets as far as sending (no route at all would fail before any filter).
TEST_NET = "203.0.113.1"


def pid1_lines(booted: Booted, since_usec: int) -> list[str]:
    """PID 1's journal lines about the unit since a CLOCK_MONOTONIC time (µs)."""
    out = []
    for entry in booted.journal("-u", UNIT, "_PID=1"):
        if int(entry["__MONOTONIC_TIMESTAMP"]) >= since_usec:
            out.append(str(entry.get("MESSAGE", "")))
    return out


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC is one clock for the host and every container (no time namespace)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def check_json(booted: Booted) -> tuple[int, list[dict[str, Any]]]:
    """``nicreconciled check --json`` inside (the installed command, as an operator runs
    it): its exit status and its rows."""
    done = booted.box.run(["/usr/bin/nicreconciled", "check", "--json"], check=False)
    rows = json.loads(done.stdout) if done.stdout.lstrip().startswith("[") else []
    return done.returncode, rows


def nic_events(booted: Booted, nic: Nic, since_usec: int) -> list[dict[str, Any]]:
    """The daemon's journal entries about NIC since a CLOCK_MONOTONIC time (µs)."""
    return [
        e
        for e in booted.journal("-u", UNIT, f"NIC_MAC={nic.mac}")
        if int(e["__MONOTONIC_TIMESTAMP"]) >= since_usec
    ]


def heal_deleted_rules(booted: Booted, nic: Nic) -> str:
    """NIC applied and its promise held; then every one of its ``from`` rules deleted from
    inside the container (as another program would), and nothing else done: no signal, no
    restart. Returns a line for the log once the kernel holds the whole promise again."""
    booted.wait_applied(nic)

    def held() -> list[dict[str, Any]] | None:
        code, rows = check_json(booted)
        mine = [r for r in rows if r["mac"] == nic.mac]
        return rows if code == 0 and mine and mine[0]["in_kernel"] else None

    wait_for(held, 20, f"`nicreconciled check` to find {nic.ifname}'s promise in the kernel")
    before = booted.service()
    since = monotonic_usec()
    # One shell, so that the daemon sees them go within milliseconds of each other.
    booted.box.sh(
        "; ".join(
            f"ip {'-6' if ':' in a else '-4'} rule del from {a} lookup {nic.table}"
            f" priority {nic.table}"
            for a in [*nic.ipv4s, nic.ipv6]
        )
    )
    deleted = time.monotonic()
    booted.wait_applied(nic)
    took = time.monotonic() - deleted

    def healed() -> list[str] | None:
        events = [str(e.get("NICRECONCILED_EVENT")) for e in nic_events(booted, nic, since)]
        return events if "kernel_healed" in events else None

    try:
        events: list[str] = wait_for(healed, 10, f"kernel_healed for {nic.mac}", step=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{booted.diagnose()}") from None
    # In that order: drift seen (one warning), re-applies of this NIC (one, or another once
    # the manager had its time if the first came before the last deletion), the promise whole.
    story = " ".join(e for e in events if e in ("kernel_drift", "heal", "kernel_healed"))
    assert re.fullmatch(r"kernel_drift( heal)+ kernel_healed", story), events
    entries = nic_events(booted, nic, since)
    drift = next(e for e in entries if e.get("NICRECONCILED_EVENT") == "kernel_drift")
    assert drift["PRIORITY"] == "4", drift
    healed_entry = next(e for e in entries if e.get("NICRECONCILED_EVENT") == "kernel_healed")
    assert healed_entry["NIC_IFNAME"] == nic.ifname, healed_entry
    after = booted.service()
    assert (after["MainPID"], after["NRestarts"]) == (before["MainPID"], before["NRestarts"])
    code, rows = check_json(booted)
    mine = [r for r in rows if r["mac"] == nic.mac]
    assert code == 0, rows
    assert len(mine) == 1, rows
    assert mine[0]["in_kernel"] is True, rows
    assert not mine[0]["missing"], rows
    assert mine[0]["heals"] >= 1, rows
    return (
        f"deleted rules back {took:.2f} s later; kernel_healed took="
        f"{healed_entry.get('TOOK', '?')} s; check: {mine[0]}"
    )


@pytest.fixture(scope="module")
def networkd_nic(booted: Booted) -> Nic:
    """NETWORKD_NIC, hot-plugged with the daemon on systemd-networkd, its metadata accepted
    (applying it is the networkd test's business: the others need only a managed NIC)."""
    booted.ensure("netplan")
    booted.plug(NETWORKD_NIC)
    wait_for(
        lambda: booted.journal(
            "-u", UNIT, f"NIC_MAC={NETWORKD_NIC.mac}", "NICRECONCILED_EVENT=accepted"
        ),
        20,
        f"the daemon accepting {NETWORKD_NIC.mac}'s metadata",
        step=0.1,
    )
    return NETWORKD_NIC


class TestLifecycle:
    def test_start_returns_after_ready_and_status_shows_the_summary(self, booted: Booted) -> None:
        booted.configure("netplan")
        booted.box.systemctl("stop", UNIT)
        started = time.monotonic()
        booted.box.systemctl("start", UNIT)
        took = time.monotonic() - started
        state = booted.service()
        # Type=notify: the start job ends only with READY=1, which carries the first STATUS=,
        # so both are there the moment `systemctl start` returns.
        assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
        assert state["StatusText"], state
        status = booted.box.systemctl("status", UNIT, "--no-pager", check=False)
        assert f'Status: "{state["StatusText"]}"' in status, status
        assert booted.box.show(UNIT, "Type", "NotifyAccess") == {
            "Type": "notify",
            "NotifyAccess": "main",
        }
        print(f"systemctl start: {took:.2f} s; {state['StatusText']}", file=sys.stderr)


class TestNetworkd:
    def test_a_hotplugged_nic_is_applied_by_systemd_networkd(
        self, booted: Booted, networkd_nic: Nic
    ) -> None:
        state = booted.wait_applied(networkd_nic)
        took = time.monotonic() - booted.plugged_at[networkd_nic.mac]
        assert f"default via {networkd_nic.gateway} dev eth1" in state["routes"], state
        # Through networkd: it owns the link, from the .network file netplan generated.
        link = booted.box.run(["networkctl", "status", "eth1"]).stdout
        assert f"/run/systemd/network/10-netplan-nicr-{networkd_nic.key}.network" in link, link
        networkd = booted.box.path("/run/systemd/network")
        assert sorted(p.name for p in networkd.iterdir()) == [
            f"10-netplan-nicr-{networkd_nic.key}.network"
        ]
        assert booted.box.path(f"/run/netplan/90-nicreconciled-{networkd_nic.key}.yaml").exists()

        def converged() -> bool:
            # One NIC (the peer lives in the router namespace, never seen here), converged.
            text = booted.prop("StatusText")
            return bool(STATUS.fullmatch(text)) and text.startswith("1 NICs (1 managed): 1 conv")

        wait_for(converged, 10, "STATUS= with the one NIC converged")
        print(f"networkd: kernel state complete {took:.2f} s after the plug", file=sys.stderr)

    def test_the_journal_has_one_nics_story_under_its_mac(
        self, booted: Booted, networkd_nic: Nic
    ) -> None:
        entries = booted.journal("-u", UNIT, f"NIC_MAC={networkd_nic.mac}")
        events = [e.get("NICRECONCILED_EVENT") for e in entries]
        assert {"nic_added", "accepted"} <= set(events), events
        for entry in entries:
            assert entry["NIC_MAC"] == networkd_nic.mac
            assert entry["SYSLOG_IDENTIFIER"] == "nicreconciled"
            assert entry["_SYSTEMD_UNIT"] == UNIT
            assert entry["_TRANSPORT"] == "journal"  # the native protocol, not stderr
            assert entry["PRIORITY"].isdigit()
            assert entry["MESSAGE"].startswith(entry["NICRECONCILED_EVENT"])
        accepted = next(e for e in entries if e["NICRECONCILED_EVENT"] == "accepted")
        assert accepted["NIC_IFNAME"] == "eth1"
        assert accepted["CLOUD"] == "ec2"
        assert re.fullmatch(r"[0-9a-f]{16}", accepted["FINGERPRINT"]), accepted

    def test_reload_refetches_every_nic(self, booted: Booted, networkd_nic: Nic) -> None:
        before = booted.service()
        booted.sim(lambda s: s.reset_stats())
        since = monotonic_usec()
        with booted.pid1_debug():
            done = booted.box.run(["systemctl", "reload", UNIT], check=False)
            assert done.returncode == 0, done.stderr

            def notified() -> list[str] | None:
                lines = [m for m in pid1_lines(booted, since) if "Got notification" in m]
                reloading = [i for i, m in enumerate(lines) if "RELOADING=1" in m]
                ready = [i for i, m in enumerate(lines) if "READY=1" in m]
                return lines if reloading and ready and ready[-1] > reloading[0] else None

            wait_for(notified, 15, "RELOADING=1 then READY=1 from the daemon")

        async def requests(sim: SimClient) -> list[str]:
            log = (await sim.stats())["log"]
            return [str(r["path"]) for r in log]

        paths = wait_for(lambda: booted.sim(requests), 10, "requests after the reload")
        assert any(networkd_nic.mac in p for p in paths), paths
        after = booted.service()
        assert after["MainPID"] == before["MainPID"]  # reloaded, not restarted
        assert (after["ActiveState"], after["SubState"]) == ("active", "running")

    def test_the_shipped_unit_heals_a_deleted_rule(self, booted: Booted, networkd_nic: Nic) -> None:
        """Another program deletes a networkd NIC's rules: the confined daemon hears it over
        rtnetlink (no capability needed) and has networkd re-apply that NIC alone
        (``networkctl reconfigure``), unasked; ``nicreconciled check`` agrees afterwards."""
        booted.ensure("netplan")
        line = heal_deleted_rules(booted, networkd_nic)
        print(f"networkd heal: {line}", file=sys.stderr)


FOREIGN_RULE = ["fwmark", "0x80", "lookup", "200", "pref", "100"]
NETWORKD_DROP_IN = "/usr/lib/systemd/networkd.conf.d/60-nicreconciled.conf"


class TestForeignRouting:
    def test_a_foreign_rule_survives_a_hot_plug_with_the_package_installed(
        self, booted: Booted, networkd_nic: Nic
    ) -> None:
        """Another program's policy routing (a rule and its table, over the NIC networkd
        already runs: the container has no other link) outlives the hot-plug of a NIC the
        daemon has networkd load: the package's networkd.conf.d drop-in keeps networkd
        from removing rules and routes it did not make (without it: gone ~1 s after)."""
        booted.ensure("netplan")
        drop_in = booted.box.path(NETWORKD_DROP_IN).read_text()
        assert "ManageForeignRoutingPolicyRules=no" in drop_in, drop_in
        assert "ManageForeignRoutes=no" in drop_in, drop_in
        # networkd read it: it started after the package was installed.
        booted.wait_applied(networkd_nic)
        nic = FOREIGN_TEST_NIC
        gateway, dev = networkd_nic.gateway, networkd_nic.ifname
        route = ["default", "via", gateway, "dev", dev, "table", "200"]
        monitor = subprocess.Popen(
            ["ip", "-n", booted.netns, "-ts", "monitor", "rule", "route"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            booted.box.run(["ip", "route", "add", *route])
            booted.box.run(["ip", "rule", "add", *FOREIGN_RULE])

            def foreign() -> tuple[bool, bool]:
                rule = any(
                    r.get("priority") == 100 and r.get("fwmark") == "0x80" and r["table"] == "200"
                    for r in booted.ip_json("-4", "rule", "show")
                )
                table = booted.ip_json("-4", "route", "show", "table", "200")
                found = any(
                    r["dst"] == "default" and r.get("gateway") == gateway and r["dev"] == dev
                    for r in table
                )
                return rule, found

            assert foreign() == (True, True)
            since = monotonic_usec()
            plugged = booted.plug(nic)
            booted.wait_applied(nic)
            applied = wait_for(
                lambda: [
                    e
                    for e in nic_events(booted, nic, since)
                    if e.get("NICRECONCILED_EVENT") == "applied"
                ],
                20,
                f"the daemon's applied event for {nic.mac}",
                step=0.1,
            )
            took = time.monotonic() - plugged
            # networkd dropped foreign rules when it began configuring the link, before its
            # addresses: by now it would have. Look on for 1.5 s all the same.
            deadline = time.monotonic() + 1.5
            samples, seen = 0, foreign()
            while seen == (True, True) and time.monotonic() < deadline:
                samples += 1
                time.sleep(0.1)
                seen = foreign()
        finally:
            booted.box.run(["ip", "rule", "del", *FOREIGN_RULE], check=False)
            booted.box.run(["ip", "route", "del", *route], check=False)
            time.sleep(0.2)  # our own deletions reach the monitor
            monitor.terminate()
            watched, _ = monitor.communicate(timeout=10)
        # (rule there, route there); the monitor's lines say who removed what, and when.
        if seen != (True, True):
            # networkd's account: which link it reconfigured and why (a changed file).
            networkd = booted.box.run(
                ["journalctl", "-u", "systemd-networkd", "--no-pager", "-n", "60"], check=False
            ).stdout
            raise AssertionError(f"after the plug: {seen}\n{watched}\n{networkd}")
        # Not even removed and put back: the only deletions are ours, in the finally.
        deleted = [
            line
            for line in watched.splitlines()
            if "Deleted" in line and ("fwmark 0x80" in line or "table 200" in line)
        ]
        assert len(deleted) == 2, watched
        assert booted.prop("ActiveState") == "active"
        print(
            f"foreign rule and table 200 intact {took:.2f} s after the plug ({len(applied)}"
            f" applied event(s), {samples} samples over 1.5 s)",
            file=sys.stderr,
        )


class TestSandbox:
    def test_the_service_writes_only_where_the_unit_allows(self, booted: Booted) -> None:
        booted.ensure("netplan")
        pid = booted.host_main_pid()
        status = Path(f"/proc/{pid}/status").read_text()
        assert re.search(r"^CapEff:\s+0+$", status, re.M), status
        assert re.search(r"^CapBnd:\s+0+$", status, re.M), status
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
        assert re.search(r"^Seccomp:\s+2$", status, re.M), status

        def writable(path: str) -> str:
            """In the service's own mount namespace: create and remove PATH/probe-nicr."""
            script = 'f="$1/probe-nicr"; touch "$f" 2>&1 && rm "$f" && echo writable'
            done = subprocess.run(
                ["nsenter", "-t", str(pid), "-m", "sh", "-c", script, "probe", path],
                capture_output=True,
                text=True,
                timeout=10,
            )
            return done.stdout.strip()

        # /run: ProtectSystem=strict leaves it writable when ProtectKernelTunables=,
        # ProtectControlGroups= or ProtectProc= are set (they imply MountAPIVFS=).
        for path in ("/etc", "/usr/local", "/var/lib", "/run", "/run/systemd"):
            assert "Read-only file system" in writable(path), path
        for path in ("/run/netplan", "/var/lib/nicreconciled", "/tmp"):
            assert writable(path) == "writable", path

    def test_ip_address_deny_blocks_a_public_address_from_the_service_cgroup(
        self, booted: Booted
    ) -> None:
        booted.ensure("netplan")
        cgroup = booted.service_cgroup()
        route = ["ip", "-n", booted.netns, "route"]
        subprocess.run([*route, "add", "203.0.113.0/24", "dev", "lo"], check=True)
        try:
            via = subprocess.run(
                [*route, "get", TEST_NET], check=True, capture_output=True, text=True
            ).stdout
            assert " dev lo " in via, via  # nowhere else to go: it stays in the container
            outside = probe(booted, None)
            inside = probe(booted, cgroup)
        finally:
            subprocess.run([*route, "del", "203.0.113.0/24", "dev", "lo"], check=False)
        # Outside the unit the datagram goes out (to lo, where it dies); inside, the unit's
        # BPF program drops it and the sender sees EPERM. Loopback stays allowed.
        assert outside["udp " + TEST_NET] == "sent", outside
        assert inside["udp " + TEST_NET] == "EPERM", inside
        # TCP gets no EPERM: the kernel ignores the failed transmit of a SYN and retries, so
        # connect() just times out (the daemon's request timeout would end it).
        assert inside["tcp " + TEST_NET] != "connected", inside
        assert inside["udp 127.0.0.1"] == "sent", inside
        assert inside["tcp 127.0.0.1:8080"] == "connected", inside  # the simulator

    def test_systemd_rates_the_running_unit_at_most_2(self, booted: Booted) -> None:
        booted.ensure("netplan")
        done = booted.box.run(["systemd-analyze", "security", UNIT, "--no-pager"], check=False)
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
        assert found, done.stdout + done.stderr
        flagged = [line for line in done.stdout.splitlines() if line.startswith("✗")]
        print(f"systemd-analyze security: {found.group(1)}; flagged:", file=sys.stderr)
        print("\n".join(flagged), file=sys.stderr)
        assert float(found.group(1)) <= 2.0, done.stdout


PROBE = r"""
import errno, json, os, socket, sys
if sys.argv[1] != "-":
    with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))
out = {}
for host, port in (("TEST_NET", 9), ("127.0.0.1", 9)):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(b"probe", (host, port))
            out[f"udp {host}"] = "sent"
        except OSError as exc:
            out[f"udp {host}"] = errno.errorcode.get(exc.errno, str(exc))
for host, port in (("TEST_NET", 80), ("127.0.0.1", 8080)):
    with socket.socket() as sock:
        sock.settimeout(0.5)
        try:
            sock.connect((host, port))
            out[f"tcp {host}" + (f":{port}" if port == 8080 else "")] = "connected"
        except OSError as exc:
            name = errno.errorcode.get(exc.errno, "") if exc.errno else type(exc).__name__
            out[f"tcp {host}" + (f":{port}" if port == 8080 else "")] = name
print(json.dumps(out))
""".replace("TEST_NET", TEST_NET)


def probe(booted: Booted, cgroup: Path | None) -> dict[str, str]:
    """Send from the container's network namespace; from within the unit's cgroup if given
    (its IPAddressDeny/Allow BPF programs then apply to the probe as to the daemon)."""
    done = subprocess.run(
        ["nsenter", f"--net=/run/netns/{booted.netns}", sys.executable, "-c", PROBE,
         str(cgroup) if cgroup else "-"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    result: dict[str, str] = json.loads(done.stdout)
    return result


class TestWatchdog:
    def test_the_shipped_watchdog_is_petted(self, booted: Booted) -> None:
        """WatchdogSec=30 as shipped (no drop-in): WATCHDOG=1 every 15 s. Waits for one
        ping after the one at start-up (the tests before this one used up part of that)."""
        before = booted.ensure("netplan")
        assert before["WatchdogUSec"] == "30s"
        first = int(before["WatchdogTimestampMonotonic"])

        def petted() -> dict[str, str] | None:
            now = booted.service()
            return now if int(now["WatchdogTimestampMonotonic"]) > first else None

        after: dict[str, str] = wait_for(petted, 20, "a WATCHDOG=1 after the first", step=0.25)
        interval = (int(after["WatchdogTimestampMonotonic"]) - first) / 1e6
        assert after["MainPID"] == before["MainPID"]
        assert after["NRestarts"] == before["NRestarts"]
        assert interval < 30
        print(f"watchdog: petted again {interval:.2f} s after the previous ping", file=sys.stderr)


class TestStop:
    def test_stop_is_clean_and_quick(self, booted: Booted) -> None:
        booted.ensure("netplan")
        since = monotonic_usec()
        started = time.monotonic()
        done = booted.box.run(["systemctl", "stop", UNIT], check=False)
        took = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        state = booted.service()
        # The daemon exited by itself on SIGTERM (CLD_EXITED = 1, status 0), well within
        # TimeoutStopSec=10: nothing was killed.
        assert (state["Result"], state["ExecMainCode"], state["ExecMainStatus"]) == (
            "success",
            "1",
            "0",
        ), state
        assert took < 5, took
        events = [
            e.get("NICRECONCILED_EVENT")
            for e in booted.journal("-u", UNIT)
            if int(e["__MONOTONIC_TIMESTAMP"]) >= since
        ]
        assert "stopped" in events, events
        print(f"systemctl stop: {took:.2f} s", file=sys.stderr)


class TestNetworkManager:
    def test_a_hotplugged_nic_is_applied_by_networkmanager(self, booted: Booted) -> None:
        booted.ensure("networkmanager")
        plugged = booted.plug(NM_NIC)
        state = booted.wait_applied(NM_NIC)
        took = time.monotonic() - plugged
        assert f"default via {NM_NIC.gateway} dev eth2" in state["routes"]
        keyfile = f"/run/NetworkManager/system-connections/nicreconciled-{NM_NIC.key}.nmconnection"
        profile = booted.box.path(keyfile).read_text()
        name = re.search(r"^id=(.+)$", profile, re.M)
        assert name, profile
        active = booted.box.run(["nmcli", "-g", "GENERAL.CONNECTION", "device", "show", "eth2"])
        assert active.stdout.strip() == name.group(1)
        print(f"NetworkManager: kernel state complete {took:.2f} s after the plug", file=sys.stderr)

    def test_the_shipped_unit_heals_a_deleted_rule(self, booted: Booted) -> None:
        """The same on NetworkManager: its NIC's rules deleted, the daemon has it re-apply
        that device alone (``nmcli device reapply``), unasked."""
        booted.ensure("networkmanager")
        if NM_NIC.mac not in booted.plugged_at:
            booted.plug(NM_NIC)
        line = heal_deleted_rules(booted, NM_NIC)
        print(f"NetworkManager heal: {line}", file=sys.stderr)


OS_NIC = Nic("fa:16:3e:00:03:03", 3)
OS_SIM_UNIT = "nicr-openstack.service"
OS_SIM_SOCKET = "/run/nicr-openstack.sock"
OS_SIM_LISTEN = "127.0.0.1:8081"


class TestOpenStackDhcpPort:
    def test_a_dhcp_port_is_completed_from_its_lease_under_the_unit(self, booted: Booted) -> None:
        """OpenStack under the shipped unit's confinement: the port is ``ipv4_dhcp`` in
        network_data.json (no address), so its address, table and rule come from networkd's
        lease file under /run/systemd/netif/leases, read by the confined service."""
        box = booted.box
        box.run(
            ["systemd-run", f"--unit={OS_SIM_UNIT}", "--property=Type=exec", "--quiet",
             VENV_PYTHON, "-m", "nicreconciled.sim", "--cloud", "openstack",
             "--listen", OS_SIM_LISTEN, "--control", OS_SIM_SOCKET]
        )  # fmt: skip
        try:
            wait_for(box.path(OS_SIM_SOCKET).exists, 30, "the OpenStack simulator")

            async def ports(sim: SimClient) -> None:
                await sim.wait_ready(20)
                await sim.add_nic(
                    OpenStackSim.lab_spec(
                        {"mac": PRIMARY, "ipv4s": ["10.0.10.10"], "subnet4": "10.0.10.0/24",
                         "gateway4": "10.0.10.1", "primary": True}
                    )
                )  # fmt: skip
                await sim.add_nic(OpenStackSim.lab_spec({"mac": OS_NIC.mac, "dhcp4": True}))

            async def run(call: Callable[[SimClient], Awaitable[None]]) -> None:
                async with SimClient(box.path(OS_SIM_SOCKET)) as client:
                    await call(client)

            asyncio.run(run(ports))
            booted.configure("netplan")
            text = daemon_config("netplan").replace('cloud = "ec2"', 'cloud = "openstack"')
            text = text.replace(
                '[ec2]\nendpoint = "http://127.0.0.1:8080"\nfallback_endpoint = ""',
                f'[openstack]\nendpoint = "http://{OS_SIM_LISTEN}"',
            )
            assert "[openstack]" in text, text
            box.write(CONFIG, text)
            booted.config = text  # the next ensure() writes the EC2 configuration back
            box.systemctl("restart", UNIT)
            booted.plug(OS_NIC)  # veth + the router's dnsmasq (its lease: ipv4s[0])
            address = OS_NIC.ipv4s[0]

            def complete() -> dict[str, set[str]] | None:
                rules = [r for r in booted.ip_json("-4", "rule", "show") if r.get("src") == address]
                if len(rules) != 1 or not 10001 <= int(rules[0]["table"]) <= 10099:
                    return None
                table = rules[0]["table"]
                routes = {
                    f"{r['dst']} via {r.get('gateway', '-')}"
                    for r in booted.ip_json("-4", "route", "show", "table", str(table))
                }
                want = {f"default via {OS_NIC.gateway}", f"10.0.{OS_NIC.octet}.0/24 via -"}
                return routes if want <= routes else None

            try:
                wait_for(complete, 30, f"{OS_NIC.ifname} completed from its lease")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{booted.diagnose()}") from None
            took = time.monotonic() - booted.plugged_at[OS_NIC.mac]
            assert booted.prop("ActiveState") == "active"
            print(f"openstack DHCP port: complete from its lease {took:.2f} s after the plug",
                  file=sys.stderr)  # fmt: skip
        finally:
            box.systemctl("stop", OS_SIM_UNIT, check=False)


DROP_IN = "/run/systemd/system/nicreconciled.service.d/50-test-watchdog.conf"


class TestStalledLoop:
    def test_a_stalled_event_loop_is_killed_by_the_watchdog_and_restarted(
        self, booted: Booted
    ) -> None:
        """The one test with a drop-in: WatchdogSec=3 instead of 30, so the kill comes
        within seconds. The loop is stalled with ptrace (stall.py): its thread alone stops,
        the rest of the process runs on."""
        booted.ensure("netplan")
        booted.box.write(DROP_IN, "[Service]\nWatchdogSec=3\n")
        tracer: subprocess.Popen[str] | None = None
        try:
            booted.box.systemctl("daemon-reload")
            # A fresh start limit: this test is about the watchdog's restart, not the limit.
            booted.box.systemctl("reset-failed", UNIT, check=False)
            booted.box.systemctl("restart", UNIT)
            before = booted.service()
            assert before["WatchdogUSec"] == "3s", before
            first = int(before["WatchdogTimestampMonotonic"])
            wait_for(
                lambda: int(booted.prop("WatchdogTimestampMonotonic")) > first,
                5,
                "a ping every 1.5 s",
            )
            pid = booted.host_main_pid()
            since = monotonic_usec()
            tracer = subprocess.Popen(
                [sys.executable, str(STALL), str(pid)], stdout=subprocess.PIPE, text=True
            )
            assert tracer.stdout is not None
            assert tracer.stdout.readline().strip() == "stalled"
            stalled = time.monotonic()
            others = len(list(Path(f"/proc/{pid}/task").iterdir())) - 1

            def restarted() -> dict[str, str] | None:
                now = booted.service()
                fresh = now["MainPID"] not in ("0", before["MainPID"])
                return now if fresh and now["ActiveState"] == "active" else None

            try:
                after: dict[str, str] = wait_for(restarted, 20, "the restart after the watchdog")
            except AssertionError as exc:
                # PID 1's own account of the watchdog, the kill and the restart.
                lines = "\n".join(pid1_lines(booted, since))
                raise AssertionError(f"{exc}\n{lines}\n{booted.service()}") from None
            took = time.monotonic() - stalled
            lines = pid1_lines(booted, since)
            assert any("Watchdog timeout (limit 3s)!" in m for m in lines), lines
            assert any("Failed with result 'watchdog'" in m for m in lines), lines
            assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
            print(
                f"watchdog: stalled loop ({others} other threads running) killed and restarted"
                f" {took:.2f} s after the stall",
                file=sys.stderr,
            )
        finally:
            if tracer is not None:
                tracer.terminate()
                tracer.wait(timeout=10)
            booted.box.run(["rm", "-f", DROP_IN])
            booted.box.systemctl("daemon-reload")
            booted.box.systemctl("reset-failed", UNIT, check=False)
            booted.box.systemctl("restart", UNIT, check=False)


def networkd_process(booted: Booted) -> dict[str, str]:
    return booted.box.show(
        "systemd-networkd.service", "ActiveState", "MainPID", "ExecMainStartTimestampMonotonic"
    )


#: dpkg's answers to a conffile the administrator changed and the package changed too.
KEEP_CONFFILES = ("--force-confdef", "--force-confold")


class TestPackage:
    def test_an_upgrade_from_the_previous_release_keeps_the_nic_and_restarts_the_unit(
        self, booted: Booted, deb: Path, networkd_nic: Nic
    ) -> None:
        """The previous release of the package for this Debian release (bookworm: 0.2.0,
        built from its commit; trixie: none exists, this is the first, so the package over
        itself) installed and running with a NIC applied, then ``dpkg -i`` of this one on a
        live host: the unit restarted on the new version, the configuration file kept, the
        NIC still complete in the kernel and ``nicreconciled check`` content."""
        previous = sdcontainer.ensure_previous_deb(
            booted.suite, log=lambda line: print(line, file=sys.stderr)
        )
        package = f"/mnt/debs/{deb.name}"
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        try:
            if previous is not None:
                booted.box.run(["dpkg", "--purge", "nicreconciled"], env=env)
                booted.config = ""
                inside = f"/var/tmp/{previous.name}"
                shutil.copyfile(previous, booted.box.path(inside))
                booted.box.install_deb(inside)
            booted.ensure("netplan")
            booted.wait_applied(networkd_nic)
            old = booted.box.run(["dpkg-query", "-W", "-f=${Version}", "nicreconciled"]).stdout
            before = booted.service()
            assert before["ActiveState"] == "active", before
            # The configuration file is a conffile the test edited and the package changed
            # since: what an unattended upgrade (unattended-upgrades) answers, keep ours.
            booted.box.install_deb(package, start=True, options=KEEP_CONFFILES)
            after = booted.service()
            new = booted.box.run(["dpkg-query", "-W", "-f=${Version}", "nicreconciled"]).stdout
            assert new == deb.name.split("_")[1], new
            assert after["ActiveState"] == "active", after
            assert after["MainPID"] != before["MainPID"], (before, after)
            assert booted.box.path(CONFIG).read_text() == booted.config
            booted.wait_applied(networkd_nic)
            code, rows = check_json(booted)
            assert code == 0, rows
            print(f"upgrade {old} -> {new}: unit restarted, NIC kept", file=sys.stderr)
        finally:
            # This release, whatever happened above.
            booted.box.install_deb(package, options=KEEP_CONFFILES)
            booted.ensure("netplan")

    def test_a_fresh_install_restarts_a_running_networkd_and_a_reinstall_does_not(
        self, booted: Booted, deb: Path
    ) -> None:
        """postinst restarts a running systemd-networkd on a fresh install on a live host (so
        that it reads the package's networkd.conf.d drop-in), not in an image build (a
        policy-rc.d that says no: ``deb-systemd-invoke`` honours it), and leaves it alone when
        the installed version is already 0.2.0 or later. Last in the module: it purges the
        package first (then ``ensure`` writes the configuration again)."""
        booted.ensure("netplan")
        package = f"/mnt/debs/{deb.name}"
        purge = ["dpkg", "--purge", "nicreconciled"]
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        first = networkd_process(booted)
        assert first["ActiveState"] == "active", first
        try:
            booted.box.install_deb(package, start=True)  # 0.2.0 over 0.2.0
            again = networkd_process(booted)
            assert again == first, (first, again)
            booted.box.run(purge, env=env)
            booted.box.install_deb(package)  # fresh, under policy-rc.d (an image build)
            built = networkd_process(booted)
            assert built == first, (first, built)
            booted.box.run(purge, env=env)
            assert not booted.box.path(NETWORKD_DROP_IN).exists()
            took = booted.box.install_deb(package, start=True)  # fresh, on a live host
            fresh = networkd_process(booted)
        finally:
            booted.config = ""  # purged with the package: ensure() writes it again
            booted.ensure("netplan")
        assert fresh["ActiveState"] == "active", fresh
        assert fresh["MainPID"] != first["MainPID"], (first, fresh)
        restarted = int(fresh["ExecMainStartTimestampMonotonic"])
        assert restarted > int(first["ExecMainStartTimestampMonotonic"]), (first, fresh)
        assert booted.box.path(NETWORKD_DROP_IN).exists()
        print(f"fresh dpkg -i ({took:.2f} s) restarted systemd-networkd", file=sys.stderr)
