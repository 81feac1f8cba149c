"""find_conflicts for google-guest-agent: the files it writes for a NIC, in every manager's
shape, and the agent itself while it is set to write them. Why it competes with us, and
what to do: conflicts.py (``ADVICE["google-guest-agent"]``) and docs/clouds/gce.md.

Where the agent writes (GoogleCloudPlatform/google-guest-agent ``cmd/core_plugin/network``,
and the older GoogleCloudPlatform/guest-agent ``google_guest_agent/network/manager``, same
names): it finds the manager that runs nic0 and configures every NIC the metadata lists, by
interface name, DHCP only:

* netplan (with networkd): one file for all NICs, ``/run/netplan/20-google-guest-agent-
  ethernet.yaml`` (``-vlan.yaml`` for dynamic NICs), ``ethernets.<if>`` with ``match: {name:
  <if>}``; on Debian 12 the id is ``a-<if>`` (to sort before the image's 90-default.yaml
  entries). Beside it a networkd drop-in for netplan's generated file of that entry,
  ``/run/systemd/network/10-netplan-<id>.network.d/override.conf`` (``[Match] Name=<if>``,
  ``DHCP=ipv4``; secondary NICs ``RoutesToDNS``/``RoutesToNTP`` false).
* NetworkManager: ``google-guest-agent-<if>.nmconnection`` (``interface-name=<if>``,
  autoconnect-priority 100), then ``nmcli conn up id google-guest-agent-<if>``.
* networkd: ``/usr/lib/systemd/network/20-<if>-google-guest-agent.network`` (the
  ``[Unstable] systemd_config_dir``), and the ``1-<if>-`` name of older agents, which the
  agent rolls back.

None of them names a MAC, so a file is the NIC's when it names the NIC's current interface
name. After a rename, the agent's next pass writes the new name; until then its enabled
unit is the finding (as amazon-ec2-net-utils' udev rule is before its first file).

The agent is set to configure NICs when ``[NetworkInterfaces] setup`` is true (its default)
in ``/etc/default/instance_configs.cfg`` and the ``.distro`` and ``.template`` files read
after it (in that order, the later winning: ``internal/cfg/cfg.go`` ``defaultDataSources``,
go-ini, case-insensitive), and ``google-guest-agent.service`` or, since the core plugin,
``google-guest-agent-manager.service`` is enabled and not masked. With ``setup = false`` it
neither writes nor removes its files: those still there are reported as left over.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import yaml

from nicreconciled.conflicts_files import NM_DIRS, exists, files, masked, read_text
from nicreconciled.conflicts_networkd import NETWORKD_DIRS, UNIT_OVERRIDE_DIRS

AGENT: Final = "google-guest-agent"
NETPLAN_DIR: Final = "run/netplan"
NETPLAN_FILES: Final = ("20-google-guest-agent-ethernet.yaml", "20-google-guest-agent-vlan.yaml")
#: Its netplan id of interface IF: IF, or a-IF on Debian 12.
NETPLAN_ID_PREFIXES: Final = ("", "a-")
DROPIN_DIR: Final = "run/systemd/network"
NM_PREFIX: Final = "google-guest-agent-"
NM_SUFFIX: Final = ".nmconnection"
#: Its networkd file priorities: current, then the one older agents used.
NETWORKD_PRIORITIES: Final = ("20", "1")
CONFIG: Final = "etc/default/instance_configs.cfg"
CONFIG_FILES: Final = (CONFIG, f"{CONFIG}.distro", f"{CONFIG}.template")
UNITS: Final = ("google-guest-agent-manager.service", "google-guest-agent.service")
UNIT_DIRS: Final = (*UNIT_OVERRIDE_DIRS, "usr/lib/systemd/system", "lib/systemd/system")
#: go-ini's ParseBool spellings.
TRUE: Final = frozenset({"1", "t", "true", "y", "yes", "on"})
FALSE: Final = frozenset({"0", "f", "false", "n", "no", "off"})


# --- the generic scanners leave these to us (its networkd files: conflicts_networkd.py) ---


def is_agent_netplan(rel: str, name: str) -> bool:
    return rel == NETPLAN_DIR and name in NETPLAN_FILES


def is_agent_keyfile(name: str) -> bool:
    return name.startswith(NM_PREFIX) and name.endswith(NM_SUFFIX)


# --- find_conflicts -----------------------------------------------------------------------


def google_guest_agent(root: Path, mac: str, ifname: str | None) -> Iterator[str]:
    """One line per file of the agent's for the NIC named IFNAME; without any, the agent
    itself if it is enabled and set to configure NICs."""
    setup, where = setup_enabled(root)
    found = [] if ifname is None else [*_files(root, mac, ifname)]
    tail = "" if setup else f" (left over: setup = false in /{where}, it no longer removes it)"
    for line in found:
        yield f"{AGENT}: {line}{tail}"
    unit = None if found or not setup else enabled_unit(root)
    if unit is not None:
        source = f"/{where}" if where else "its default"
        yield (
            f"{AGENT}: {unit} is enabled with [NetworkInterfaces] setup = true ({source}): "
            "it configures every secondary NIC the metadata lists, by interface name"
        )


def _files(root: Path, mac: str, ifname: str) -> Iterator[str]:
    ids = [f"{p}{ifname}" for p in NETPLAN_ID_PREFIXES]
    for name in NETPLAN_FILES:
        document = _yaml(root / NETPLAN_DIR / name)
        for where, reason in _netplan_entries(document, mac, ifname, ids):
            yield f"/{NETPLAN_DIR}/{name} {where} {reason}"
    for netdef_id in ids:
        rel = f"{DROPIN_DIR}/10-netplan-{netdef_id}.network.d/override.conf"
        if exists(root / rel):
            yield f"/{rel} adds DHCP to netplan's 10-netplan-{netdef_id}.network"
    yield from _keyfiles(root, ifname)
    for priority in NETWORKD_PRIORITIES:
        name = f"{priority}-{ifname}-google-guest-agent.network"
        directory = _networkd_file(root, name)
        if directory is not None:
            yield f"/{directory}/{name} matches Name={ifname}"


def _netplan_entries(
    document: Any, mac: str, ifname: str, ids: list[str]
) -> Iterator[tuple[str, str]]:
    network = document.get("network") if isinstance(document, dict) else None
    if not isinstance(network, dict):
        return
    ethernets = network.get("ethernets")
    for netdef_id, entry in ethernets.items() if isinstance(ethernets, dict) else ():
        match = entry.get("match") if isinstance(entry, dict) else None
        name = match.get("name") if isinstance(match, dict) else None
        if name == ifname or (name is None and netdef_id in ids):
            generated = f"/{DROPIN_DIR}/10-netplan-{netdef_id}.network"
            yield (
                f"ethernets.{netdef_id}",
                f"matches name {ifname} (netplan generate makes it {generated}, "
                "which sorts before netplan's file for ours)",
            )
    vlans = network.get("vlans")
    for netdef_id, entry in vlans.items() if isinstance(vlans, dict) else ():
        if not isinstance(entry, dict):
            continue
        own = str(entry.get("macaddress", "")).strip().lower() == mac
        if own or entry.get("link") in ids:
            what = "has this NIC's MAC" if own else f"is a VLAN on {ifname}"
            yield f"vlans.{netdef_id}", what


def _keyfiles(root: Path, ifname: str) -> Iterator[str]:
    for rel in NM_DIRS:
        for path in files(root / rel, suffix=NM_SUFFIX):
            if not path.name.startswith(NM_PREFIX):
                continue
            bound = _keyfile_interface(read_text(path) or "")
            if bound == ifname or (
                bound is None and path.name == f"{NM_PREFIX}{ifname}{NM_SUFFIX}"
            ):
                yield f"/{rel}/{path.name} is bound to interface {ifname}"


def _keyfile_interface(text: str) -> str | None:
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        key, sep, value = line.partition("=")
        if section == "connection" and sep and key.strip() == "interface-name":
            return value.strip()
    return None


def _networkd_file(root: Path, name: str) -> str | None:
    """The directory whose NAME networkd reads (the first, by precedence), unless that one
    masks it."""
    for rel in NETWORKD_DIRS:
        path = root / rel / name
        if exists(path):
            return None if masked(path) else rel
    return None


def _yaml(path: Path) -> Any:
    text = read_text(path)
    if text is None:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


# --- the agent's settings and unit --------------------------------------------------------


def setup_enabled(root: Path) -> tuple[bool, str]:
    """``[NetworkInterfaces] setup`` as the agent reads it, and the file that set it ("" for
    its default, true). A value go-ini cannot parse leaves the one before it."""
    value, where = True, ""
    for rel in CONFIG_FILES:
        text = read_text(root / rel)
        if text is None:
            continue
        found = _ini_value(text, "networkinterfaces", "setup")
        if found is not None and found.lower() in TRUE | FALSE:
            value, where = found.lower() in TRUE, rel
    return value, where


def _ini_value(text: str, section: str, key: str) -> str | None:
    current, value = None, None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip().lower()
            continue
        name, sep, rest = line.partition("=")
        if not sep:
            name, sep, rest = line.partition(":")
        if sep and current == section and name.strip().lower() == key:
            value = rest.strip().strip("\"'")
    return value


def enabled_unit(root: Path) -> str | None:
    """The agent's unit that ``systemctl enable`` linked into a target (under /etc), and is
    installed and not masked."""
    for unit in UNITS:
        if any(masked(root / d / unit) for d in UNIT_OVERRIDE_DIRS):
            continue
        if not any(exists(root / d / unit) for d in UNIT_DIRS):
            continue
        wants = [p for p in files(root / "etc/systemd/system", suffix=".wants", dirs=True)]
        if any(exists(w / unit) for w in wants):
            return unit
    return None
