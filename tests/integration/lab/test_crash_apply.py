"""Crashes on the real stack (issue 19, part 3): the daemon SIGKILLed at each step of an
apply, with the real systemd-networkd (netplan renderer) and NetworkManager (keyfiles).

Two ENIs. A is converged first; then, with the crash armed, A's metadata changes (a
secondary IPv4 added) while B is hot-plugged, so one apply batch carries both, and the
daemon dies at STEP (a stand-in of the tool SIGKILLs it, ``lab.Crash``):

========  ==============================================  =====================================
manager   ``first``                                       ``last``
========  ==============================================  =====================================
networkd  after netplan's generator ran into the scratch  at ``networkctl reload``: our files
          tree, before anything is installed               installed, networkd not told
nm        at ``nmcli connection load``: keyfiles written,  at ``nmcli connection up``: loaded,
          not loaded                                       A's active profile not re-activated
========  ==============================================  =====================================

The kernel must not have A's new address then (nothing loaded it). A new daemon is started:
both ENIs complete in the kernel with the new metadata, A's changed file loaded by it
(``applied``: unchanged on disk, but its load was never done), and no scratch tree of the
killed run left (``scratch_removed``).
"""

from __future__ import annotations

import time

import pytest

from nicreconciled.lab import Crash, Eni, Lab
from tests.integration.lab.conftest import LabStack, record_timing

pytestmark = pytest.mark.integration

STEPS: dict[str, dict[str, Crash]] = {
    "networkd": {
        "first": Crash("netplan-generate", "--root-dir", after=True),
        "last": Crash("networkctl", "reload"),
    },
    "nm": {
        "first": Crash("nmcli", "connection load"),
        "last": Crash("nmcli", "connection up"),
    },
}
ADDED = "10.0.13.23"


def _scratch(lab: Lab) -> list[str]:
    return sorted(p.name for p in lab.tmp.glob("nicreconciled-netplan.*"))


@pytest.mark.parametrize("step", ["first", "last"])
def test_a_daemon_killed_mid_apply_is_finished_by_the_next(stack: LabStack, step: str) -> None:
    lab = stack.lab
    crash = STEPS[lab.manager][step]
    a, b = Eni.plan(3), Eni.plan(4)
    first = lab.start_daemon(crash=crash)
    stack.attach(a)
    stack.wait_complete(a)

    first.arm_crash()
    stack.sim.update_nic(a.mac, {"local_ipv4s": [*a.ipv4s, ADDED]})
    stack.attach(b)
    first.hup()
    lab.wait_for(
        lambda: not first.alive(),
        30,
        f"the daemon killed at {crash.tool} {crash.words}",
        describe=lambda: f"armed: {first.crash_armed()}\n{first.tail()}",
    )
    assert first.proc.popen.returncode == -9
    assert ADDED not in {x.local for x in lab.addresses(a.ifname, 4)}, "loaded by a dead daemon"
    left = _scratch(lab)
    if crash.tool == "netplan-generate":
        assert len(left) == 1, f"the killed generate's scratch tree: {left}"
    else:
        assert left == []

    started = time.monotonic()
    second = lab.start_daemon()
    took_a = stack.wait_complete(a, ipv4s=[*a.ipv4s, ADDED])
    stack.wait_complete(b)
    assert _scratch(lab) == []
    if crash.tool == "netplan-generate":
        removed = second.events("scratch_removed")
        assert [e["path"].rsplit("/", 1)[1] for e in removed] == left
    # A's change was in the killed batch; B's attach may have had a batch of its own before
    # it, which only the crash at the activation lets finish (B auto-activates, no ``up``).
    assert a.mac in {e["mac"] for e in second.events("applied")}, second.tail()
    assert b.mac in {e["mac"] for e in [*first.events("applied"), *second.events("applied")]}
    record_timing(
        f"[{lab.manager}] killed at {crash.tool} {crash.words}: restarted daemon complete "
        f"after {took_a - started:.2f} s"
    )
