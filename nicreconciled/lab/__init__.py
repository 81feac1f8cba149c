"""The network lab: the REAL systemd-networkd or NetworkManager for hot-plugged NICs.

Used by the kernel-level tests (``tests/integration/lab``), and meant for the demo and the
benchmarks. Root only; synchronous (subprocesses). Needs (Debian 12): systemd, netplan.io,
network-manager, dbus-daemon, dnsmasq-base, iproute2, tcpdump, iputils-ping, util-linux;
udev for a lab with ``udev_rules`` (a real systemd-udevd with the test's rules: ``udevd``).
Runs the same from another release's root (``scripts/suite-lab trixie``, Debian 13's
stack): everything enters the instance with the holder's root as well (``nsenter -r``), and
the manager's and the daemon's binaries are checked to be that root's.

    with Lab("networkd", workdir, tag="demo") as lab:   # or "nm"
        primary = lab.plug_primary("0a:00:00:00:00:01", "10.0.0.10")  # foreign config
        sim = lab.start_sim()                           # IMDS simulator in the instance
        sim.add_nic({"mac": primary.mac, "device_number": 0, ...})
        sim.set_primary(primary.mac)
        daemon = lab.start_daemon()                     # nicreconciled run, JSON log
        eni = Eni.plan(1)                               # 10.0.11.20-22, 2001:db8:11::10
        sim.add_nic(eni.spec())
        eni.nic = lab.plug(eni.mac, eni.ipv4s[0], 24, eni.subnet6)   # the hot-plug
        lab.wait_for(lambda: not missing_state(lab, eni), 20, "complete kernel state")
        print(lab.ping_from_peer(eni.ipv4s[1]))         # replies, and by which router port

What runs where (see ``base`` for the why): an *instance* network namespace with a private
mount namespace held by a ``sleep`` (tmpfs over /run, /etc/netplan,
/etc/NetworkManager/system-connections, /var/lib/NetworkManager, /etc/systemd/network;
/sys read-only), a private dbus-daemon, the manager, and later the simulator and the daemon;
a *router* namespace (forwarding, strict rp_filter, remote peers ``PEER4``/``PEER6`` on lo,
one dnsmasq per port for DHCPv4, DHCPv6 and router advertisements). Hot-plug = the NIC end
of a veth made in the router, born with the ENI's MAC, moved into the instance.

The daemon gets a test-only ``netplan`` wrapper first on its PATH: it runs the real netplan
and rewrites ``PermanentMACAddress=`` to ``MACAddress=`` in the ``10-netplan-*.network``
files it wrote (under ``<root-dir>/run/systemd/network`` with ``--root-dir``), because a veth
has no permanent MAC. Real NICs have one; the product needs no such thing.
"""

from nicreconciled.lab.base import (
    BUS_NAME,
    OUTPUT_DIR,
    LabError,
    LabTimeout,
    Manager,
    missing_tools,
)
from nicreconciled.lab.daemon import DEFAULT_POLLING, Crash, Daemon
from nicreconciled.lab.eni import Eni, missing_state, table_of
from nicreconciled.lab.kernel import Address, Family, Rule
from nicreconciled.lab.lab import Lab
from nicreconciled.lab.nics import Nic
from nicreconciled.lab.simctl import SimControl, SimControlError
from nicreconciled.lab.watch import (
    PEER4,
    PEER6,
    AddressMonitor,
    AddressSampler,
    AddrEvent,
    PingResult,
)

__all__ = [
    "BUS_NAME",
    "DEFAULT_POLLING",
    "OUTPUT_DIR",
    "PEER4",
    "PEER6",
    "AddrEvent",
    "Address",
    "AddressMonitor",
    "AddressSampler",
    "Crash",
    "Daemon",
    "Eni",
    "Family",
    "Lab",
    "LabError",
    "LabTimeout",
    "Manager",
    "Nic",
    "PingResult",
    "Rule",
    "SimControl",
    "SimControlError",
    "missing_state",
    "missing_tools",
    "table_of",
]
