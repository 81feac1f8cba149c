"""udev's word on who manages a NIC, on the REAL systemd-udevd and systemd-networkd (the lab's
udev instance: ``Lab(udev_rules=...)``, see ``nicreconciled.lab.udevd``), with the daemon
reading udev (``[udev] source = "udev"``, the product's default).

Three NICs are hot-plugged together next to the primary, with an administrator's .network
file that would configure FOREIGN and CONTROL by DHCP:

* FOREIGN: listed by the metadata; a rule of the test's sets ``ID_NET_MANAGED_BY`` to
  another daemon's name;
* ENI: listed by the metadata, no rule: the daemon's;
* CONTROL: not listed by the metadata, no rule, under the same .network file as FOREIGN.

The daemon reports FOREIGN ``foreign`` (the property as the reason) and writes no file for
it while the ENI converges next to it. networkd, systemd >= 255 (Debian 13: 257) honours the
property: FOREIGN stays unmanaged and down, no DHCP request reaches its router port, while
CONTROL is configured from the file. systemd 252 (Debian 12) does not know the property: it
waits for udev's answer ("udev initialized link") and configures FOREIGN from the file like
CONTROL.

Then what ``netplan apply`` does to udev (a live ``netplan generate``, which writes
90-netplan.rules with ``NM_UNMANAGED=1`` for every definition netplan renders for networkd,
the daemon's included, and a "change" event for every NIC): the ENI stays the daemon's and
a new address from the metadata still lands.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from nicreconciled.lab import Daemon, Eni, Lab, SimControl, missing_state, missing_tools
from nicreconciled.lab.versions import systemd_major
from nicreconciled.model import mac_to_key
from tests.conftest import require_tool
from tests.integration.lab.conftest import PRIMARY_IPV4, PRIMARY_MAC, record_timing

pytestmark = pytest.mark.integration

#: The other manager udev gives FOREIGN to (any name but networkd's is someone else).
OTHER = "org.example.LabOther"
ADMIN_FILE = "/etc/systemd/network/80-lab-admin.network"
#: The first systemd whose networkd honours ID_NET_MANAGED_BY.
MANAGED_BY_SINCE = 255


def other_manager_rule(mac: str) -> dict[str, str]:
    line = f'SUBSYSTEM=="net", ACTION!="remove", ATTR{{address}}=="{mac}", '
    line += f'ENV{{ID_NET_MANAGED_BY}}="{OTHER}"\n'
    return {"70-lab-other-manager.rules": line}


def admin_network(*macs: str) -> str:
    """What an administrator's catch-some file looks like: DHCP on these NICs."""
    return f"[Match]\nMACAddress={' '.join(macs)}\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\n"


@dataclass
class UdevStack:
    lab: Lab
    sim: SimControl
    daemon: Daemon
    foreign: Eni
    eni: Eni
    control: Eni
    systemd: int

    def status(self, eni: Eni) -> dict[str, Any]:
        """The daemon's status file of ENI ({} while there is none)."""
        path = self.lab.workdir / "state" / "nics" / f"{mac_to_key(eni.mac)}.json"
        with contextlib.suppress(OSError, ValueError):
            data: dict[str, Any] = json.loads(path.read_text())
            return data
        return {}

    def setup_state(self, eni: Eni) -> str:
        """networkd's SETUP column for ENI's link (``networkctl list``)."""
        done = self.lab.run(["networkctl", "list", "--no-legend", "--no-pager"])
        for line in done.stdout.splitlines():
            words = line.split()
            if len(words) >= 5 and words[1] == eni.ifname:
                return words[4]
        return ""

    def link_up(self, eni: Eni) -> bool:
        (link,) = self.lab.ip_json("link", "show", "dev", eni.ifname)
        return "UP" in link.get("flags", [])


@pytest.fixture(scope="module")
def udev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UdevStack]:
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (network and mount namespaces)", pytrace=False)
    for tool in missing_tools("networkd", udev=True):
        require_tool(tool)  # fails (never skips) with the install hint
    foreign = Eni.plan(44, secondaries=0, ipv6=False)
    eni = Eni.plan(45, secondaries=0, ipv6=False)
    control = Eni.plan(46, secondaries=0, ipv6=False)
    started = time.monotonic()
    # The daemon's debug log: its udev events, to know when it has seen one.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("NICR_LAB_VERBOSE", "1")
        workdir = tmp_path_factory.mktemp("udev") / "lab"
        with Lab(
            "networkd", workdir, tag="udev", udev_rules=other_manager_rule(foreign.mac)
        ) as lab:
            lab.plug_primary(PRIMARY_MAC, PRIMARY_IPV4)
            lab.write(ADMIN_FILE, admin_network(foreign.mac, control.mac), 0o644)
            lab.run(["networkctl", "reload"])
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
            daemon = lab.start_daemon()
            nics = []
            for plan in (foreign, eni, control):
                plan.nic = lab.prepare(lab.new_nic(plan.mac, plan.ipv4s[0], 24))
                nics.append(plan.nic)
            sim.add_nic(foreign.spec())
            sim.add_nic(eni.spec())
            lab.attach(*nics)
            record_timing(
                f"[networkd + udevd] lab with udevd {lab.timings['udevd']:.3f} s; "
                f"daemon ready and NICs plugged {time.monotonic() - started:.2f} s"
            )
            yield UdevStack(lab, sim, daemon, foreign, eni, control, systemd_major(lab))


def test_a_nic_udev_gives_to_another_manager_is_foreign_and_networkd_obeys_where_it_can(
    udev_stack: UdevStack,
) -> None:
    st, lab = udev_stack, udev_stack.lab
    foreign, eni, control = st.foreign, st.eni, st.control
    assert foreign.nic is not None
    assert control.nic is not None
    t0 = lab.plugged_at[eni.mac]

    # udev ran the test's rule on FOREIGN only.
    props = lab.wait_for(lambda: lab.udev_properties(foreign.ifname), 20, "udev's entry")
    assert props.get("ID_NET_MANAGED_BY") == OTHER, props
    for plan in (eni, control):
        assert "ID_NET_MANAGED_BY" not in (lab.udev_properties(plan.ifname) or {})

    # The daemon: FOREIGN foreign, no file; the ENI next to it converges.
    lab.wait_for(lambda: not missing_state(lab, eni, ipv6=False), 30, "the ENI's kernel state")
    took = time.monotonic() - t0
    lab.wait_for(lambda: st.status(foreign).get("managed") == "foreign", 20, "FOREIGN foreign")
    assert st.status(foreign)["managed_detail"] == f"ID_NET_MANAGED_BY={OTHER}"
    assert st.status(eni)["managed"] == "managed"
    lab.wait_for(lambda: st.status(control).get("managed") == "unlisted", 20, "CONTROL unlisted")
    assert lab.path(lab.output_file(eni.mac)).is_file()
    assert not lab.path(lab.output_file(foreign.mac)).exists()
    assert not lab.path(lab.output_file(control.mac)).exists()

    # networkd: CONTROL is configured from the administrator's file in any case.
    def control_configured() -> bool:
        have = {a.local for a in lab.addresses(control.ifname, 4)}
        return st.setup_state(control) == "configured" and control.ipv4s[0] in have

    lab.wait_for(control_configured, 30, "CONTROL configured by the administrator's file")
    assert lab.dhcp_acks(control.nic) >= 1
    log = (lab.workdir / "networkd.log").read_text(errors="replace")
    if st.systemd >= MANAGED_BY_SINCE:
        # The property is honoured: unmanaged from udev's answer on, never brought up, no
        # DHCP request, although the same file configured CONTROL meanwhile.
        assert st.setup_state(foreign) == "unmanaged"
        assert not st.link_up(foreign)
        assert lab.addresses(foreign.ifname, 4) == []
        assert lab.dhcp_acks(foreign.nic) == 0
        assert OTHER in log  # networkd says why
        verdict = "unmanaged"
    else:
        # systemd 252 waited for udev, then ignored the property: the file configures it.
        assert f"{foreign.ifname}: udev initialized link" in log

        def configured() -> bool:
            have = {a.local for a in lab.addresses(foreign.ifname, 4)}
            return st.setup_state(foreign) == "configured" and foreign.ipv4s[0] in have

        lab.wait_for(configured, 30, "FOREIGN configured by networkd 252 all the same")
        assert lab.dhcp_acks(foreign.nic) >= 1
        verdict = "configured (252 ignores ID_NET_MANAGED_BY)"
    record_timing(
        f"[networkd {st.systemd} + udevd] ENI complete +{took:.2f} s next to a foreign NIC; "
        f"the foreign NIC is {verdict}"
    )


def test_netplans_own_nm_unmanaged_rule_does_not_make_an_eni_foreign(
    udev_stack: UdevStack,
) -> None:
    """``netplan apply`` regenerates 90-netplan.rules (``NM_UNMANAGED=1`` for the daemon's
    definitions too) and sends every NIC a "change": the ENI stays the daemon's."""
    st, lab = udev_stack, udev_stack.lab
    eni, foreign = st.eni, st.foreign
    lab.wait_for(lambda: not missing_state(lab, eni, ipv6=False), 30, "the ENI's kernel state")
    lab.wait_for(lambda: st.status(eni).get("managed") == "managed", 20, "the ENI managed")
    seen = len(st.daemon.events("udev_event", action="change", ifname=eni.ifname))
    # What netplan apply does to udev, with the lab's wrapper (veths' MACs) around netplan.
    lab.run([str(st.daemon.bin_dir / "netplan"), "generate"])
    lab.run(["udevadm", "trigger", "--action=change", "--subsystem-match=net"])
    props = lab.wait_for(
        lambda: (lab.udev_properties(eni.ifname) or {}).get("NM_UNMANAGED") == "1",
        20,
        "netplan's NM_UNMANAGED=1 on the ENI",
    )
    assert props
    lab.wait_for(
        lambda: len(st.daemon.events("udev_event", action="change", ifname=eni.ifname)) > seen,
        20,
        "the daemon to see the ENI's change event",
    )
    assert st.status(eni)["managed"] == "managed", st.status(eni)
    assert st.daemon.events("nic_not_ours", mac=eni.mac) == []
    assert st.status(foreign)["managed"] == "foreign"

    # Still the daemon's to reconcile: a new address from the metadata lands.
    added = [*eni.ipv4s, "10.0.55.30"]
    st.sim.update_nic(eni.mac, {"local_ipv4s": added})
    t0 = time.monotonic()
    st.daemon.hup()
    lab.wait_for(
        lambda: not missing_state(lab, eni, ipv4s=added, ipv6=False), 30, "the new address"
    )
    record_timing(
        f"[networkd {st.systemd} + udevd] after netplan's NM_UNMANAGED rule and a change "
        f"event: the ENI still the daemon's, a new address in +{time.monotonic() - t0:.2f} s"
    )
