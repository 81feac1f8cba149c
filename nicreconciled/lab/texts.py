"""The files the lab writes: bus and NetworkManager configuration, tool wrappers, the primary
NIC's foreign configuration and the daemon's configuration. Pure functions returning text."""

from __future__ import annotations

import json
import shlex
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

#: The real netplan; the wrapper on the daemon's PATH runs it.
NETPLAN = "/usr/sbin/netplan"

#: uuid5 namespace of the primary NIC's foreign keyfile (not the product's namespace).
_PRIMARY_UUID_NS = uuid.UUID("6c1e0b4e-3f0a-5d8e-9a51-6c6162707269")


def bus_config(socket: str = "/run/dbus/system_bus_socket") -> str:
    """A system bus that runs as the caller (root), forks nothing and activates nothing.

    The policy is the stock system bus's default policy; the services' own policies
    (NetworkManager's, networkd's) come from the usual include directory.
    """
    allow = [
        '<allow user="*"/>',
        '<deny own="*"/>',
        '<deny send_type="method_call"/>',
        '<allow send_type="signal"/>',
        '<allow send_requested_reply="true" send_type="method_return"/>',
        '<allow send_requested_reply="true" send_type="error"/>',
        *(f'<allow receive_type="{kind}"/>' for kind in _RECEIVE),
        *(
            f'<allow send_destination="org.freedesktop.DBus" send_interface="{iface}"/>'
            for iface in _BUS_INTERFACES
        ),
    ]
    policy = "\n".join(f"    {line}" for line in allow)
    return (
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
        "<busconfig>\n"
        "  <type>system</type>\n"
        "  <auth>EXTERNAL</auth>\n"
        f"  <listen>unix:path={socket}</listen>\n"
        '  <policy context="default">\n'
        f"{policy}\n"
        "  </policy>\n"
        "  <includedir>/usr/share/dbus-1/system.d</includedir>\n"
        "</busconfig>\n"
    )


_RECEIVE = ("method_call", "method_return", "error", "signal")
_BUS_INTERFACES = (
    "org.freedesktop.DBus",
    "org.freedesktop.DBus.Introspectable",
    "org.freedesktop.DBus.Properties",
)


def nm_config() -> str:
    """NetworkManager.conf for the lab: keyfiles only, no auto profiles, no polkit, its
    internal DHCP client, hands off DNS, no connectivity checks, debug logging."""
    sections = {
        "main": {
            "plugins": "keyfile",
            "no-auto-default": "*",
            "auth-polkit": "false",
            "dhcp": "internal",
            "dns": "none",
            "rc-manager": "unmanaged",
            "systemd-resolved": "false",
        },
        "connectivity": {"enabled": "false"},
        "logging": {"level": "DEBUG"},
    }
    return _ini(sections)


def _ini(sections: Mapping[str, Mapping[str, str]]) -> str:
    out: list[str] = []
    for name, keys in sections.items():
        out.append(f"[{name}]")
        out += [f"{k}={v}" for k, v in keys.items()]
        out.append("")
    return "\n".join(out)


def netplan_wrapper(real: str = NETPLAN) -> str:
    """TEST-ONLY ``netplan``: run the real one, then match veths by their current MAC.

    netplan 0.106 renders ``match: macaddress`` as ``PermanentMACAddress=``; a veth has no
    permanent MAC (real ENIs and virtio NICs do), so networkd would never match it. The
    files are rewritten where netplan just wrote them: ``<root-dir>/run/systemd/network``
    with ``--root-dir DIR`` (or ``--root-dir=DIR``), else ``/run/systemd/network``.
    """
    return f"""#!/bin/sh
# nicreconciled lab (test only): real netplan, then MACAddress= instead of PermanentMACAddress=
{shlex.quote(real)} "$@"
status=$?
[ "$status" -eq 0 ] || exit "$status"
root=
while [ "$#" -gt 0 ]; do
    case "$1" in
        --root-dir=*) root=${{1#--root-dir=}} ;;
        --root-dir) [ "$#" -gt 1 ] && root=$2 && shift ;;
    esac
    shift
done
for f in "$root"/run/systemd/network/10-netplan-*.network; do
    [ -f "$f" ] || continue
    sed -i 's/^PermanentMACAddress=/MACAddress=/' "$f" || exit 1
done
exit 0
"""


def generator_wrapper(real: str) -> str:
    """TEST-ONLY netplan generator (``[netplan] generator``): the REAL one, then
    MACAddress= instead of PermanentMACAddress= in the files it wrote under ``--root-dir``
    (veths have no permanent MAC: see netplan_wrapper)."""
    return f"""#!/bin/sh
# nicreconciled lab (test only): netplan's generator, then MACAddress= for veths
{shlex.quote(real)} "$@" || exit
root=
while [ "$#" -gt 0 ]; do
    case "$1" in
        --root-dir=*) root=${{1#--root-dir=}} ;;
        --root-dir) [ "$#" -gt 1 ] && root=$2 && shift ;;
    esac
    shift
done
for f in "$root"/run/systemd/network/10-netplan-*.network; do
    [ -f "$f" ] || continue
    sed -i 's/^PermanentMACAddress=/MACAddress=/' "$f" || exit 1
done
exit 0
"""


def failing_tool(name: str) -> str:
    """A stand-in that fails like a broken tool would (apply-failure tests)."""
    return f"""#!/bin/sh
echo "{name}: disabled by the nicreconciled lab (simulated failure)" >&2
exit 1
"""


def crashing_tool(real: str, words: str, *, after: bool, armed: Path) -> str:
    """TEST-ONLY stand-in that SIGKILLs its caller (the daemon) at one step of an apply: the
    first call whose arguments contain WORDS once ARMED exists (the file is taken, so one
    crash per arming), before the REAL tool runs or, AFTER, once it has run."""
    real_q, armed_q = shlex.quote(real), shlex.quote(str(armed))
    run = f'{real_q} "$@"\n        ' if after else ""
    return f"""#!/bin/sh
# nicreconciled lab (test only): the caller is SIGKILLed at "{words}" once armed
case " $* " in
    *" {words} "*)
        if rm {armed_q} 2>/dev/null; then
        {run}kill -KILL "$PPID"
        exit 137
        fi ;;
esac
exec {real_q} "$@"
"""


def primary_netplan(ifname: str, mac: str, address: str, gateway: str) -> str:
    """A cloud-init-like ``50-cloud-init.yaml``: the primary NIC, static (foreign to us)."""
    return f"""# Written by the nicreconciled lab as cloud-init would (a foreign file).
network:
  version: 2
  ethernets:
    {ifname}:
      match:
        macaddress: "{mac}"
      set-name: {ifname}
      addresses: ["{address}"]
      routes:
      - to: 0.0.0.0/0
        via: {gateway}
      link-local: []
"""


def primary_keyfile(ifname: str, mac: str, address: str, gateway: str) -> tuple[str, str]:
    """(connection id, text) of a cloud-init-like keyfile for the primary NIC (foreign)."""
    cid = f"cloud-init {ifname}"
    text = _ini(
        {
            "connection": {
                "id": cid,
                "uuid": str(uuid.uuid5(_PRIMARY_UUID_NS, mac.lower())),
                "type": "ethernet",
                "autoconnect-priority": "120",
            },
            "ethernet": {"mac-address": mac.upper()},
            "ipv4": {"method": "manual", "address1": f"{address},{gateway}"},
            "ipv6": {"method": "disabled"},
        }
    )
    return cid, text


def daemon_config(
    *,
    renderer: str,
    output_dir: Path,
    state_dir: Path,
    endpoint: str,
    ignore: Iterable[str],
    polling: Mapping[str, float],
    resync_interval: float,
    cloud: str = "ec2",
    kernel: Mapping[str, bool | int] | None = None,
    udev_source: str = "kernel",
    generator: str = "",
    metrics: str = "",
    settings: Mapping[str, str | int | float | bool] | None = None,
) -> str:
    """SETTINGS: more keys of the cloud's own table (``token_ttl = 5``)."""
    lines = [
        f'cloud = "{cloud}"',
        f'renderer = "{renderer}"',
        f'output_dir = "{output_dir}"',
        f'state_dir = "{state_dir}"',
        "apply = true",
        f"resync_interval = {resync_interval:g}",
        "[interfaces]",
        "virtual = true",
        "ignore = [" + ", ".join(f'"{pattern}"' for pattern in ignore) + "]",
        "[udev]",
        f'source = "{udev_source}"',
        # The simulator's address as the cloud's endpoint (every cloud but CloudStack, whose
        # virtual routers are found as on a real instance); EC2 also loses its fallback.
        *([f"[{cloud}]", f'endpoint = "{endpoint}"'] if cloud != "cloudstack" else []),
        *(f"{k} = {json.dumps(v)}" for k, v in (settings or {}).items() if cloud != "cloudstack"),
        *(['fallback_endpoint = ""'] if cloud == "ec2" else []),
        "[polling]",
        *(f"{key} = {value:g}" for key, value in polling.items()),
    ]
    if generator:
        lines += ["[netplan]", f'generator = "{generator}"']
    if metrics:
        lines += ["[metrics]", f'textfile = "{metrics}"']
    if kernel:
        lines.append("[kernel]")
        lines += [f"{key} = {str(value).lower()}" for key, value in kernel.items()]
    return "\n".join(lines) + "\n"
