"""Keeping the applied configuration true in the kernel, with the real systemd-networkd or
NetworkManager.

Each test runs for both managers (``stack``) unless said: the daemon follows rtnetlink, and
when something deletes what a managed NIC's applied configuration promises (its addresses,
its rules ``from <addr> lookup T`` at priority T, the routes of table T) it re-applies that
NIC alone (``networkctl reconfigure IF`` / ``nmcli device reapply IF``), at most
``[kernel] heal_limit`` times per NIC per 10 minutes. The assertions are on ``ip -j``, the
daemon's JSON log, its status files and ``nicreconciled check``; waits are on conditions,
and the only fixed waits are the short samplings (~1-1.5 s) that show something stays so.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nicreconciled.lab import Daemon, Eni, Lab, kernel, missing_state, missing_tools
from nicreconciled.model import mac_to_key
from tests.conftest import require_tool
from tests.integration.lab.conftest import (
    PRIMARY_IPV4,
    PRIMARY_MAC,
    LabStack,
    record_timing,
)

pytestmark = pytest.mark.integration

#: The foreign policy routing of test 8 (a container network plug-in's, say).
FOREIGN_RULE = ["rule", "add", "fwmark", "0x80", "lookup", "200", "pref", "100"]
FOREIGN_ROUTE = ["route", "add", "default", "via", "10.0.0.1", "dev", "eth0", "table", "200"]
#: How ``ip rule`` (and the daemon's ``foreign_rules_at_risk``) prints that rule.
FOREIGN_RULE_TEXT = "100: from all fwmark 0x80 lookup 200"


def _tag(lab: Lab) -> str:
    return f"[{lab.manager}]"


def _rule_text(eni: Eni, source: str) -> str:
    """The promise's line for the rule from SOURCE (as in ``kernel_missing`` and ``check``)."""
    prefix = 128 if ":" in source else 32
    return f"rule from {source}/{prefix} lookup {eni.table} priority {eni.table}"


def _has_rule(lab: Lab, eni: Eni, source: str) -> bool:
    return source in lab.rule_sources(6 if ":" in source else 4, eni.table)


def _status(lab: Lab, eni: Eni) -> dict[str, Any]:
    """The daemon's status file of ENI ({} while there is none)."""
    path = lab.workdir / "state" / "nics" / f"{mac_to_key(eni.mac)}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


def _wait_events(
    lab: Lab, daemon: Daemon, name: str, count: int = 1, timeout: float = 20, **match: Any
) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]]:
        events = daemon.events(name, **match)
        return events if len(events) >= count else []

    return lab.wait_for(
        found,
        timeout,
        f"{count} {name} event(s) in the daemon's log",
        describe=lambda: f"{len(daemon.events(name, **match))} so far",
    )


def _stays(lab: Lab, condition: Callable[[], bool], seconds: float, what: str) -> int:
    """Sample CONDITION every 50 ms for SECONDS; fail at the first sample it is false.
    Returns the number of samples."""
    end = time.monotonic() + seconds
    samples = 0
    while time.monotonic() < end:
        assert condition(), f"{what}: no longer so after {samples} samples\n{lab.diagnostics()}"
        samples += 1
        time.sleep(0.05)
    return samples


def _check(lab: Lab, daemon: Daemon, *args: str, config: Path | None = None) -> Any:
    """``nicreconciled check ARGS`` inside the instance (the daemon's configuration)."""
    argv = [sys.executable, "-m", "nicreconciled", "--config", str(config or daemon.config)]
    return lab.run([*argv, "check", *args], check=False)


def _check_json(lab: Lab, daemon: Daemon, eni: Eni) -> tuple[int, dict[str, Any]]:
    done = _check(lab, daemon, "--json")
    rows = json.loads(done.stdout)
    row = next((r for r in rows if r["mac"] == eni.mac), None)
    assert row is not None, f"check --json lists no {eni.mac}: {done.stdout}{done.stderr}"
    return done.returncode, row


def _delete_rules(lab: Lab, eni: Eni) -> None:
    """Every rule of ENI, IPv4 in one ``ip`` process, then IPv6 (``ip -batch`` has one
    family): a burst of a few milliseconds."""
    table = str(eni.table)
    kernel.ip_batch(lab.instance, [["rule", "del", "from", a, "table", table] for a in eni.ipv4s])
    for address in eni.ipv6s:
        kernel.ip(lab.instance, "-6", "rule", "del", "from", address, "table", table)


def _wait_healed(stack: LabStack, daemon: Daemon, eni: Eni, before: int) -> tuple[float, float]:
    """Wait for ENI's complete state after a deletion at BEFORE heal events, and for the
    daemon's ``kernel_healed``; returns (when complete, the daemon's ``took``)."""
    complete = stack.wait_complete(eni, timeout=20)
    healed = _wait_events(stack.lab, daemon, "kernel_healed", before + 1)
    return complete, float(healed[-1]["took"])


def test_deleted_rules_are_healed_once_and_the_primary_is_left_alone(stack: LabStack) -> None:
    """Every rule of the ENI deleted at once (both families): the daemon heals it by itself,
    with one heal for the burst; meanwhile the primary NIC (configured by a foreign file)
    never loses its address (a 20 ms sampler and ``ip monitor``)."""
    lab = stack.lab
    daemon = lab.start_daemon()
    eni = Eni.plan(1, secondaries=1)
    stack.attach(eni)
    stack.wait_complete(eni)
    primary = stack.primary
    assert not daemon.events("heal"), daemon.tail()

    with lab.sample_address(primary.ifname, primary.ipv4) as sampler:
        t0 = time.monotonic()
        _delete_rules(lab, eni)
        complete, took = _wait_healed(stack, daemon, eni, 0)
        # The sampler keeps going while the manager may still be reconfiguring the ENI.
        lab.wait_for(lambda: time.monotonic() - complete > 0.5, 5, "0.5 s more", step=0.1)
    record_timing(
        f"{_tag(lab)} {len(eni.ipv4s) + len(eni.ipv6s)} rules deleted -> complete:"
        f" {complete - t0:.2f} s (daemon: healed in {took:.2f} s);"
        f" primary sampled {sampler.samples} times"
    )
    heals = daemon.events("heal")
    assert len(heals) == 1, f"{len(heals)} heals for one burst: {heals}"
    drifts = daemon.events("kernel_drift")
    assert drifts, daemon.tail()
    assert _rule_text(eni, eni.ipv4s[0]) in drifts[0]["missing"], drifts[0]

    assert sampler.samples > 10, f"sampler: {sampler.samples} samples, {sampler.errors}"
    lost = stack.monitor.deleted(primary.ifname)
    assert not sampler.missing, (
        f"primary {primary.ifname} lost {primary.ipv4} during the heal of {eni.ifname}:"
        f" missing in {len(sampler.missing)} of {sampler.samples} samples,"
        f" deleted {len(lost)} times ({[e.line for e in lost]})\n" + lab.diagnostics()
    )
    assert not lost, f"primary {primary.ifname}: {[e.line for e in lost]}"


def test_flushed_table_and_deleted_address_are_healed(stack: LabStack) -> None:
    """Table T flushed (both families), healed without a signal; then a secondary IPv4
    address deleted, healed without a signal; then the link set down (not healed: reported
    as ``link down``) and up again (complete again)."""
    lab = stack.lab
    daemon = lab.start_daemon()
    eni = Eni.plan(2, secondaries=1)
    stack.attach(eni)
    stack.wait_complete(eni)
    t = str(eni.table)

    t0 = time.monotonic()
    kernel.ip(lab.instance, "route", "flush", "table", t)
    # Debian 13's iproute2 refuses this flush ("Failed to send flush request: Invalid
    # argument"): then every route of the table is deleted one by one, as a person would.
    if kernel.ip(lab.instance, "-6", "route", "flush", "table", t, check=False).returncode:
        for route in lab.routes(6, int(t)):
            argv = [str(route["dst"])]
            argv += ["via", str(route["gateway"])] if route.get("gateway") else []
            argv += ["dev", str(route["dev"])] if route.get("dev") else []
            kernel.ip(lab.instance, "-6", "route", "del", *argv, "table", t, check=False)
    assert missing_state(lab, eni), "table flushed, nothing missing?"
    complete, took = _wait_healed(stack, daemon, eni, 0)
    record_timing(
        f"{_tag(lab)} table {t} flushed -> complete: {complete - t0:.2f} s"
        f" (daemon: healed in {took:.2f} s)"
    )

    secondary = eni.ipv4s[1]
    t0 = time.monotonic()
    kernel.ip(lab.instance, "addr", "del", f"{secondary}/24", "dev", eni.ifname)
    complete, took = _wait_healed(stack, daemon, eni, 1)
    record_timing(
        f"{_tag(lab)} address {secondary} deleted -> complete: {complete - t0:.2f} s"
        f" (daemon: healed in {took:.2f} s)"
    )
    heals = daemon.events("heal")
    assert len(heals) == 2, f"{len(heals)} heals for two deletions: {heals}"
    assert f"address {secondary}/24" in heals[1]["missing"], heals[1]

    # Set down on purpose: what that takes away is reported, not healed (a heal would bring
    # the link up against the operator); set up again, the manager restores it.
    kernel.ip(lab.instance, "link", "set", eni.ifname, "down")
    (down,) = _wait_events(lab, daemon, "link_down")[:1]
    assert down["missing"], down  # what the down link lost: reported, not healed
    _stays(lab, lambda: len(daemon.events("heal")) == 2, 0.5, "no heal of a link set down")
    kernel.ip(lab.instance, "link", "set", eni.ifname, "up")
    t0 = time.monotonic()
    complete = stack.wait_complete(eni, timeout=20)
    record_timing(f"{_tag(lab)} link set down, then up: complete {complete - t0:.2f} s after")


def test_without_heal_drift_is_reported_checked_and_healed_by_sighup(stack: LabStack) -> None:
    """With ``[kernel] heal = false``: ``check`` exits 0 while all is there; a deleted rule is
    reported (``kernel_drift``, phase ``drifting``, ``check`` exits 1 and names it) and stays
    missing; SIGHUP heals it and ``check`` exits 0 again. A bad configuration: exit 2."""
    lab = stack.lab
    daemon = lab.start_daemon(kernel={"heal": False})
    eni = Eni.plan(3, secondaries=1)
    stack.attach(eni)
    stack.wait_complete(eni)
    lab.wait_for(lambda: _status(lab, eni).get("promise"), 10, "the promise in the status file")

    code, row = _check_json(lab, daemon, eni)
    assert (code, row["in_kernel"], row["missing"]) == (0, True, []), row
    assert row["ifname"] == eni.ifname, row

    victim = eni.ipv4s[0]
    rule = _rule_text(eni, victim)
    kernel.ip(lab.instance, "rule", "del", "from", victim, "table", str(eni.table))
    drift = _wait_events(lab, daemon, "kernel_drift")[0]
    assert drift["missing"] == [rule], drift

    def drifting() -> bool:
        status = _status(lab, eni)
        return status.get("phase") == "drifting" and rule in status.get("kernel_missing", [])

    lab.wait_for(drifting, 10, "phase drifting", describe=lambda: str(_status(lab, eni)))
    samples = _stays(lab, lambda: not _has_rule(lab, eni, victim), 1.0, f"rule {victim} missing")
    assert not daemon.events("heal"), daemon.tail()

    code, row = _check_json(lab, daemon, eni)
    assert (code, row["in_kernel"], row["missing"]) == (1, False, [rule]), row
    text = _check(lab, daemon)
    lines = [line for line in text.stdout.splitlines() if eni.mac in line]
    assert text.returncode == 1, text
    assert len(lines) == 1, text.stdout
    assert "missing" in lines[0], text.stdout
    assert rule in lines[0], text.stdout

    daemon.hup()
    t0 = time.monotonic()
    took = stack.wait_complete(eni, timeout=20) - t0
    lab.wait_for(
        lambda: _status(lab, eni).get("phase") not in (None, "drifting"),
        10,
        "the phase no longer drifting",
        describe=lambda: str(_status(lab, eni)),
    )
    record_timing(
        f"{_tag(lab)} heal = false: rule missing for {samples} samples (~1 s) after the"
        f" drift report; SIGHUP -> complete {took:.2f} s"
    )
    assert len(daemon.events("heal")) == 1, daemon.tail()
    code, row = _check_json(lab, daemon, eni)
    assert (code, row["in_kernel"]) == (0, True), row

    bad = lab.workdir / "bad.toml"
    bad.write_text("no_such_key = 1\n" + daemon.config.read_text())
    done = _check(lab, daemon, "--json", config=bad)
    assert done.returncode == 2, done


def test_heal_limit_stops_a_fight(stack: LabStack) -> None:
    """``[kernel] heal_limit = 2`` and a program deleting the ENI's rule each time it comes
    back: two heals, then one ``heal_limit_reached`` and no more; the phase is ``drifting``
    naming the rule, which stays missing; SIGHUP restores it and the phase leaves drifting."""
    lab = stack.lab
    daemon = lab.start_daemon(kernel={"heal_limit": 2})
    eni = Eni.plan(4, secondaries=1)
    stack.attach(eni)
    stack.wait_complete(eni)
    victim = eni.ipv4s[0]
    rule = _rule_text(eni, victim)
    table = str(eni.table)

    deletions = 0
    t0 = time.monotonic()
    deadline = t0 + 30
    while not daemon.events("heal_limit_reached"):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no heal_limit_reached after 30 s ({deletions} deletions)\n" + lab.diagnostics()
            )
        if _has_rule(lab, eni, victim):
            done = kernel.ip(
                lab.instance, "rule", "del", "from", victim, "table", table, check=False
            )
            deletions += done.returncode == 0
        time.sleep(0.02)
    stopped = time.monotonic() - t0
    heals = daemon.events("heal")
    assert len(heals) == 2, f"{len(heals)} heals with heal_limit = 2: {heals}"
    assert len(daemon.events("heal_limit_reached")) == 1, daemon.tail()

    def drifting() -> bool:
        status = _status(lab, eni)
        return status.get("phase") == "drifting" and rule in status.get("kernel_missing", [])

    lab.wait_for(drifting, 10, "phase drifting", describe=lambda: str(_status(lab, eni)))
    _stays(lab, lambda: not _has_rule(lab, eni, victim), 1.0, f"rule {victim} missing")
    assert len(daemon.events("heal")) == 2, daemon.tail()
    assert len(daemon.events("heal_limit_reached")) == 1, daemon.tail()

    daemon.hup()
    t1 = time.monotonic()
    took = stack.wait_complete(eni, timeout=20) - t1
    lab.wait_for(
        lambda: _status(lab, eni).get("phase") not in (None, "drifting"),
        10,
        "the phase no longer drifting",
        describe=lambda: str(_status(lab, eni)),
    )
    record_timing(
        f"{_tag(lab)} fight (heal_limit 2): {deletions} deletions, heal_limit_reached after"
        f" {stopped:.2f} s; SIGHUP -> complete {took:.2f} s"
    )


def test_manager_restart_mid_burst_converges(stack: LabStack) -> None:
    """Three ENIs hot-plugged at once, the manager restarted as soon as the daemon wrote the
    first file: every ENI reaches its complete state, and the daemon saw the manager back.
    Then a rule deleted while the manager is stopped (the heal cannot run: the manager's
    tool fails) is back, with every ENI complete, once the manager is."""
    lab = stack.lab
    daemon = lab.start_daemon()
    enis = [Eni.plan(n, secondaries=1) for n in (5, 6, 7)]
    t0 = time.monotonic()
    stack.attach(*enis)
    files = [lab.path(lab.output_file(e.mac)) for e in enis]
    lab.wait_for(lambda: any(f.exists() for f in files), 30, "a file written")
    written = time.monotonic() - t0
    back = lab.restart_manager() - t0
    done = [stack.wait_complete(e, timeout=60) - t0 for e in enis]
    _wait_events(lab, daemon, "network_manager_back")
    record_timing(
        f"{_tag(lab)} burst of 3 + manager restart: first file at +{written:.2f} s, manager"
        f" back at +{back:.2f} s, complete at "
        + ", ".join(f"+{t:.2f}" for t in done)
        + f" s; {len(daemon.events('heal'))} heals,"
        f" {len(daemon.events('apply_failed'))} failed applies"
    )
    assert daemon.alive(), daemon.tail()

    victim = enis[0]
    heals = len(daemon.events("heal"))
    lab.stop_manager()
    _wait_events(lab, daemon, "network_manager_gone")
    kernel.ip(lab.instance, "rule", "del", "from", victim.ipv4s[0], "table", str(victim.table))
    rule = _rule_text(victim, victim.ipv4s[0])
    lab.wait_for(
        lambda: rule in _status(lab, victim).get("kernel_missing", []),
        10,
        "the daemon noticing the deletion (status file)",
        describe=lambda: str(_status(lab, victim)),
    )
    assert not _has_rule(lab, victim, victim.ipv4s[0]), lab.describe()
    t1 = time.monotonic()
    lab.start_manager()
    _wait_events(lab, daemon, "network_manager_back", 2)
    done = [stack.wait_complete(e, timeout=30) - t1 for e in enis]
    record_timing(
        f"{_tag(lab)} rule deleted while the manager was stopped: complete "
        + ", ".join(f"+{t:.2f}" for t in done)
        + f" s after its start; {len(daemon.events('heal')) - heals} heals meanwhile,"
        f" {len(daemon.events('heal_failed'))} failed"
    )
    assert daemon.alive(), daemon.tail()


def test_a_manager_outage_does_not_use_up_the_heal_budget(stack: LabStack) -> None:
    """A rule deleted while the manager is stopped for 3 s (``heal_limit = 2``): nothing can
    heal it meanwhile; once the manager is back the ENI is complete, and a later deletion is
    still healed: an outage is not a fight (``heal_limit_reached`` must not be spent on
    heals that can only fail)."""
    lab = stack.lab
    daemon = lab.start_daemon(kernel={"heal_limit": 2})
    eni = Eni.plan(9, secondaries=1)
    stack.attach(eni)
    stack.wait_complete(eni)
    victim, table = eni.ipv4s[0], str(eni.table)

    lab.stop_manager()
    _wait_events(lab, daemon, "network_manager_gone")
    kernel.ip(lab.instance, "rule", "del", "from", victim, "table", table)
    _stays(lab, lambda: not _has_rule(lab, eni, victim), 3.0, "rule missing, no manager")
    lab.start_manager()
    _wait_events(lab, daemon, "network_manager_back")
    stack.wait_complete(eni, timeout=30)

    kernel.ip(lab.instance, "rule", "del", "from", victim, "table", table)
    t0 = time.monotonic()
    try:
        took = stack.wait_complete(eni, timeout=5) - t0
    finally:
        record_timing(
            f"{_tag(lab)} 3 s manager outage (heal_limit 2): {len(daemon.events('heal'))}"
            f" heals ({len(daemon.events('heal_failed'))} failed),"
            f" {len(daemon.events('heal_limit_reached'))} heal_limit_reached; phase after a"
            f" later deletion: {_status(lab, eni).get('phase')}"
        )
    record_timing(f"{_tag(lab)} after the outage, a deletion healed in {took:.2f} s")


def _foreign_policy(lab: Lab) -> None:
    kernel.ip(lab.instance, *FOREIGN_RULE)
    kernel.ip(lab.instance, *FOREIGN_ROUTE)


def _foreign_rule(lab: Lab) -> bool:
    return any(r.priority == 100 and r.raw.get("fwmark") == "0x80" for r in lab.rules(4, 200))


def _foreign_route(lab: Lab) -> bool:
    return lab.route_destinations(4, 200).get("default") == "10.0.0.1"


def test_foreign_rule_and_table_survive_a_hotplug(stack: LabStack) -> None:
    """A foreign fwmark rule and table 200 (on the primary NIC) added before the hot-plug are
    still there once the ENI is applied and complete, and 1.5 s later (on networkd: the
    drop-in our package ships, so the daemon has no foreign rule at risk to warn about)."""
    lab = stack.lab
    _foreign_policy(lab)
    daemon = lab.start_daemon()
    eni = Eni.plan(8, secondaries=1)
    stack.attach(eni)
    stack.wait_complete(eni)
    _wait_events(lab, daemon, "applied")
    samples = _stays(
        lab, lambda: _foreign_rule(lab) and _foreign_route(lab), 1.5, "foreign rule and table"
    )
    assert not daemon.events("foreign_rules_at_risk"), daemon.tail()
    record_timing(f"{_tag(lab)} foreign rule + table 200 kept ({samples} samples over 1.5 s)")


@pytest.fixture
def bare_networkd(tmp_path: Path) -> Iterator[Lab]:
    """A networkd lab WITHOUT our drop-in: networkd's defaults remove foreign rules."""
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (network and mount namespaces)", pytrace=False)
    for tool in missing_tools("networkd"):
        require_tool(tool)
    with Lab("networkd", tmp_path / "lab", tag="t", networkd_drop_in=False) as the_lab:
        yield the_lab


def test_without_the_drop_in_networkd_removes_the_foreign_rule(bare_networkd: Lab) -> None:
    """Negative control (networkd only): without the drop-in, the daemon warns at start
    (``foreign_rules_at_risk`` naming the rule) and networkd removes the foreign rule when
    it configures the hot-plugged ENI."""
    lab = bare_networkd
    lab.plug_primary(PRIMARY_MAC, PRIMARY_IPV4)
    sim = lab.start_sim()
    sim.add_nic(
        {
            "mac": PRIMARY_MAC,
            "device_number": 0,
            "local_ipv4s": [PRIMARY_IPV4],
            "subnet_ipv4_cidr": "10.0.0.0/24",
        }
    )
    sim.set_primary(PRIMARY_MAC)
    _foreign_policy(lab)
    daemon = lab.start_daemon()
    warnings = daemon.events("foreign_rules_at_risk")
    assert len(warnings) == 1, daemon.tail()
    assert FOREIGN_RULE_TEXT in warnings[0]["rules"], warnings[0]

    eni = Eni.plan(8, secondaries=1)
    eni.nic = lab.prepare(lab.new_nic(eni.mac, eni.ipv4s[0], 24, eni.subnet6))
    sim.add_nic(eni.spec())
    lab.attach(eni.nic)
    t0 = time.monotonic()
    lab.wait_for(lambda: not _foreign_rule(lab), 15, "networkd removing the foreign rule")
    gone = time.monotonic() - t0
    lab.wait_for(lambda: not missing_state(lab, eni), 20, f"{eni.mac} complete")
    record_timing(
        f"[networkd, no drop-in] foreign rule removed {gone:.2f} s after the hot-plug;"
        f" table 200's default route {'kept' if _foreign_route(lab) else 'removed too'}"
    )
