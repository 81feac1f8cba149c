"""Find other tools that already configure a NIC we are about to manage.

Two configurations for one NIC do not merge, they compete: NetworkManager activates one of
the profiles that match the device (by autoconnect priority, then by last use), netplan
merges same-named definitions and renders both of two definitions that match one device,
and a hotplug hook re-renders the NIC behind our back on every attach. The result changes
from boot to boot. ``find_conflicts`` names each such configuration in one line, prefixed
by the tool (``networkmanager:``, ``netplan:``, ``amazon-ec2-net-utils:``,
``google-guest-agent:``, ``systemd-networkd:``, ``cloud-init:``);
``advice`` turns a line into what to disable and why. Scanning is read-only and never
raises: an unreadable or malformed file is skipped (a file its own tool cannot parse does
not configure anything either).

What to disable, per tool (README-ready):

* NetworkManager profiles (``*.nmconnection`` in /etc, /run or /usr/lib
  NetworkManager/system-connections) bound to the NIC's MAC or name: delete them (``nmcli
  connection delete UUID``) or, for a cloud-init one, stop cloud-init from rendering
  secondary NICs. NetworkManager picks one profile per device; ours has autoconnect
  priority 150, but an explicit ``nmcli connection up`` of the other profile still wins.
* netplan definitions (/etc, /run, /lib netplan ``*.yaml``) matching the NIC: remove the
  definition. Two definitions that match one device are both rendered, and networkd or
  NetworkManager then applies one of them.
* amazon-ec2-net-utils (``policy-routes@IFACE.service``, started for every ena, ixgbevf or
  vif NIC by its udev rule ``99-vpc-policy-routes.rules``, writing
  /run/systemd/network/70-IFACE.network, ``07-IFACE.network`` in Debian's package whose
  patch moves it before netplan's files, and ``.d`` drop-ins with the ENI's MAC, tables,
  rules and secondary addresses): it installs the same tables and rules as we do (same
  numbers) and refreshes them every minute; two writers of one table flap, and whichever
  ``.network`` file sorts first decides what networkd applies. Mask
  ``policy-routes@.service`` and ``refresh-policy-routes@.timer`` or remove the package.
  The udev rule is reported too (while the unit is not masked): it catches the tool before
  its first file is written, which races with ours on a hot-plug.
* google-guest-agent (GCE; its files, all named after the interface: the netplan entry in
  /run/netplan/20-google-guest-agent-ethernet.yaml and its networkd drop-in
  ``10-netplan-<id>.network.d/override.conf``, ``google-guest-agent-IF.nmconnection``,
  ``20-IF-google-guest-agent.network`` and the older ``1-IF-``; before its first file, its
  enabled unit while ``[NetworkInterfaces] setup`` is true): it configures the NIC by name,
  DHCP only, rewrites its files on every pass and runs ``nmcli conn up`` on its profile. On
  a netplan host its entry becomes ``10-netplan-IF.network``, which sorts before netplan's
  file for ours (``10-netplan-nicr-KEY.network``), so networkd applies the agent's and our
  policy routing never lands. Set ``setup = false`` and ``ip_forwarding = false`` under
  ``[NetworkInterfaces]`` in /etc/default/instance_configs.cfg, restart the agent, then
  delete the files it left (details: conflicts_gce.py, docs/clouds/gce.md).
* systemd-networkd ``.network`` files of other origin (/etc, /run, /usr/lib, /lib
  systemd/network) that match the NIC by MAC (``MACAddress=``, ``PermanentMACAddress=``) or
  by its exact name, or that match every NIC by a name glob and sort before our files:
  networkd applies only the first matching file (lexical order of the names) and ignores
  the others. Remove that file or narrow its ``[Match]``. netplan's generated
  ``10-netplan-*`` files are reported through their YAML (above), amazon-ec2-net-utils' and
  google-guest-agent's through those tools.
* cloud-init hotplug (/etc/udev/rules.d/90-cloud-init-hook-hotplug.rules, installed when
  user data enables ``updates: network: when: [hotplug]``): on every attach it re-renders
  the NIC from what the metadata says at that moment (on EC2 since 25.1, for 30 s more) and
  applies it globally. Disable hotplug in the user data, or delete the rule and run
  ``udevadm control --reload``.

systemd-networkd's directories (amazon-ec2-net-utils, other ``.network`` files) are scanned
by conflicts_networkd.py; conflicts_files.py reads the files, never raising.
"""

from __future__ import annotations

import configparser
import fnmatch
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import yaml

from nicreconciled import conflicts_gce, conflicts_networkd
from nicreconciled.conflicts_files import NM_DIRS, exists, files, keyfile_mac, read_text
from nicreconciled.model import normalize_mac

NETPLAN_DIRS: Final = ("etc/netplan", "run/netplan", "lib/netplan")
CLOUD_INIT_HOTPLUG_RULE: Final = "etc/udev/rules.d/90-cloud-init-hook-hotplug.rules"

#: Our own files: NetworkManagerRenderer, NetplanRenderer.
OURS_NM: Final = "nicreconciled-"
OURS_NETPLAN: Final = "90-nicreconciled-"
#: Keyfiles netplan generates from YAML: the YAML is scanned and reported instead (it is
#: what an operator has to change; editing the generated file would not survive a reboot).
NETPLAN_GENERATED_NM: Final = "netplan-"

ADVICE: Final = {
    "networkmanager": (
        "Delete that profile (nmcli connection delete <uuid>) or stop the tool that writes it: "
        "NetworkManager activates only one profile per NIC, so the two would take turns."
    ),
    "netplan": (
        "Remove that definition from the netplan file: netplan renders every definition that "
        "matches the NIC, and the backend applies one of them."
    ),
    "amazon-ec2-net-utils": (
        "Mask policy-routes@.service and refresh-policy-routes@.timer (or remove "
        "amazon-ec2-net-utils): it writes the same policy tables and rules every minute."
    ),
    "google-guest-agent": (
        "Set setup = false and ip_forwarding = false under [NetworkInterfaces] in "
        "/etc/default/instance_configs.cfg (and not back to true in its .distro or .template), "
        "run systemctl try-restart google-guest-agent-manager google-guest-agent, then delete "
        "the files of it listed here (those under /run also go at reboot). Deleting them alone "
        "does not last: it rewrites them on its next pass. Left on, it configures the NIC by "
        "name, DHCP only: on a netplan host netplan generate turns its entry into "
        "/run/systemd/network/10-netplan-IF.network, which sorts before 10-netplan-nicr-*.network "
        "(ours), so networkd applies the agent's and our policy routing never lands; on "
        "NetworkManager its nmcli conn up of google-guest-agent-IF replaces our profile."
    ),
    "systemd-networkd": (
        "Remove that .network file or narrow its [Match] so it no longer matches this NIC: "
        "networkd applies only the first matching file (by name) and ignores the others."
    ),
    "cloud-init": (
        "Disable cloud-init network hotplug (user data updates.network.when) or delete "
        "/etc/udev/rules.d/90-cloud-init-hook-hotplug.rules and run udevadm control --reload: "
        "on every attach it re-renders the NIC from the metadata of that moment."
    ),
}


def find_conflicts(mac: str, ifname: str | None, root: Path = Path("/")) -> list[str]:
    """One line per other configuration of the NIC MAC (named IFNAME now, if present)."""
    mac = normalize_mac(mac)
    found = list(_networkmanager(root, mac, ifname))
    found += _netplan(root, mac, ifname)
    ec2_net_utils = list(conflicts_networkd.ec2_net_utils(root, mac, ifname))
    found += ec2_net_utils
    found += conflicts_gce.google_guest_agent(root, mac, ifname)
    found += conflicts_networkd.networkd(root, mac, ifname)
    if exists(root / CLOUD_INIT_HOTPLUG_RULE):
        found.append(
            f"cloud-init: /{CLOUD_INIT_HOTPLUG_RULE} runs cloud-init's hotplug hook for "
            "every NIC that is attached"
        )
    return found


def advice(conflict: str) -> str:
    """What to do about one line returned by ``find_conflicts``."""
    tool, _, _ = conflict.partition(":")
    return ADVICE.get(tool, "Make sure only one tool configures this NIC.")


# --- NetworkManager ---------------------------------------------------------------------


def _networkmanager(root: Path, mac: str, ifname: str | None) -> Iterator[str]:
    for rel in NM_DIRS:
        for path in files(root / rel, suffix=None):
            if path.name.startswith((OURS_NM, NETPLAN_GENERATED_NM)):
                continue
            if conflicts_gce.is_agent_keyfile(path.name):
                continue
            parser = _read_ini(path)
            if parser is None or _nm_default_wired(parser):
                continue
            reason = _nm_reason(parser, mac, ifname)
            if reason is not None:
                label = parser.get("connection", "id", fallback=path.name)
                yield f"networkmanager: /{rel}/{path.name} (profile {label!r}) {reason}"


def _nm_default_wired(parser: configparser.RawConfigParser) -> bool:
    """NetworkManager's own "Wired connection N" for an unconfigured NIC (no-auto-default
    unset): generated, autoconnect priority -999. It never wins against ours (150) and comes
    back when deleted, so reporting it would be noise, not a conflict."""
    generated = parser.get(".nmmeta", "nm-generated", fallback="").strip().lower() == "true"
    try:
        priority = int(parser.get("connection", "autoconnect-priority", fallback="0"))
    except ValueError:
        priority = 0
    return generated or priority <= -999


def _nm_reason(parser: configparser.RawConfigParser, mac: str, ifname: str | None) -> str | None:
    for section in ("ethernet", "802-3-ethernet"):
        value = parser.get(section, "mac-address", fallback=None)
        if value is not None and keyfile_mac(value) == mac:
            return f"is bound to MAC {mac}"
    name = parser.get("connection", "interface-name", fallback=None)
    if ifname is not None and name is not None and name.strip() == ifname:
        return f"is bound to interface {ifname}"
    return None


def _read_ini(path: Path) -> configparser.RawConfigParser | None:
    # GLib key files are close enough to INI for the three keys we read; strict=False
    # tolerates repeated keys, and anything else unparsable means "skip".
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    text = read_text(path)
    if text is None:
        return None
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error:
        return None
    return parser


# --- netplan ----------------------------------------------------------------------------


def _netplan(root: Path, mac: str, ifname: str | None) -> Iterator[str]:
    for rel in NETPLAN_DIRS:
        for path in files(root / rel, suffix=".yaml"):
            if path.name.startswith(OURS_NETPLAN) or conflicts_gce.is_agent_netplan(rel, path.name):
                continue
            text = read_text(path)
            if text is None:
                continue
            try:
                document = yaml.safe_load(text)
            except yaml.YAMLError:
                continue
            for netdef_id, reason in _netplan_matches(document, mac, ifname):
                yield f"netplan: /{rel}/{path.name} ethernets.{netdef_id} {reason}"


def _netplan_matches(document: Any, mac: str, ifname: str | None) -> Iterator[tuple[str, str]]:
    network = document.get("network") if isinstance(document, dict) else None
    ethernets = network.get("ethernets") if isinstance(network, dict) else None
    if not isinstance(ethernets, dict):
        return
    for netdef_id, definition in ethernets.items():
        if not isinstance(definition, dict):
            continue
        reason = _netplan_reason(str(netdef_id), definition, mac, ifname)
        if reason is not None:
            yield str(netdef_id), reason


def _netplan_reason(
    netdef_id: str, definition: dict[Any, Any], mac: str, ifname: str | None
) -> str | None:
    match = definition.get("match")
    if match is None:
        # Without match, the definition id is the interface name.
        return f"configures interface {ifname}" if ifname == netdef_id else None
    if not isinstance(match, dict):
        return None
    # Every condition present must hold (netplan ANDs them); one we cannot evaluate here
    # (driver) is assumed to hold, and the line says so.
    reasons = []
    if "macaddress" in match:
        value = match["macaddress"]
        if not (isinstance(value, str) and value.strip().lower() == mac):
            return None
        reasons.append(f"matches MAC {mac}")
    if "name" in match:
        pattern = match["name"]
        if ifname is None or not isinstance(pattern, str):
            return None
        if not fnmatch.fnmatchcase(ifname, pattern):
            return None
        reasons.append(f"matches name {pattern!r}")
    if "driver" in match:
        reasons.append(f"matches driver {match['driver']!r} (if this NIC uses it)")
    set_name = definition.get("set-name")
    if isinstance(set_name, str) and ifname is not None and set_name == ifname:
        reasons.append(f"sets the name {ifname}")
    elif isinstance(set_name, str) and reasons:
        reasons.append(f"renames it to {set_name}")
    return ", ".join(reasons) if reasons else None
