"""Find other tools that already configure a NIC we are about to manage.

Two configurations for one NIC do not merge, they compete: NetworkManager activates one of
the profiles that match the device (by autoconnect priority, then by last use), netplan
merges same-named definitions and renders both of two definitions that match one device,
and a hotplug hook re-renders the NIC behind our back on every attach. The result changes
from boot to boot. ``find_conflicts`` names each such configuration in one line, prefixed
by the tool (``networkmanager:``, ``netplan:``, ``amazon-ec2-net-utils:``, ``cloud-init:``);
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
* amazon-ec2-net-utils (``policy-routes@IFACE.service``, writing
  /run/systemd/network/70-IFACE.network and ``.d`` drop-ins): it installs the same tables
  and rules as we do and refreshes them every minute; two writers of one table flap. Mask
  ``policy-routes@.service`` and ``refresh-policy-routes@.timer`` or remove the package.
* cloud-init hotplug (/etc/udev/rules.d/90-cloud-init-hook-hotplug.rules, installed when
  user data enables ``updates: network: when: [hotplug]``): on every attach it re-renders
  the NIC from what the metadata says at that moment (on EC2 since 25.1, for 30 s more) and
  applies it globally. Disable hotplug in the user data, or delete the rule and run
  ``udevadm control --reload``.
"""

from __future__ import annotations

import configparser
import fnmatch
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import yaml

from nicreconciled.model import normalize_mac

NM_DIRS: Final = (
    "etc/NetworkManager/system-connections",
    "run/NetworkManager/system-connections",
    "usr/lib/NetworkManager/system-connections",
)
NETPLAN_DIRS: Final = ("etc/netplan", "run/netplan", "lib/netplan")
EC2_NET_UTILS_DIR: Final = "run/systemd/network"
CLOUD_INIT_HOTPLUG_RULE: Final = "etc/udev/rules.d/90-cloud-init-hook-hotplug.rules"

#: Our own files: NetworkManagerRenderer, NetplanRenderer.
OURS_NM: Final = "nicreconciled-"
OURS_NETPLAN: Final = "90-nicreconciled-"
#: Keyfiles netplan generates from YAML: the YAML is scanned and reported instead (it is
#: what an operator has to change; editing the generated file would not survive a reboot).
NETPLAN_GENERATED_NM: Final = "netplan-"

#: Files larger than this are not configuration we could be competing with; skip them.
MAX_FILE_BYTES: Final = 1 << 20

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
    found += _ec2_net_utils(root, mac, ifname)
    if _exists(root / CLOUD_INIT_HOTPLUG_RULE):
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
        for path in _files(root / rel, suffix=None):
            if path.name.startswith((OURS_NM, NETPLAN_GENERATED_NM)):
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
        if value is not None and _keyfile_mac(value) == mac:
            return f"is bound to MAC {mac}"
    name = parser.get("connection", "interface-name", fallback=None)
    if ifname is not None and name is not None and name.strip() == ifname:
        return f"is bound to interface {ifname}"
    return None


def _keyfile_mac(value: str) -> str | None:
    """A keyfile MAC: ``0A:1B:..`` or the old list of decimal bytes ``10;27;..``."""
    value = value.strip()
    if ";" in value:
        try:
            octets = [int(b) for b in value.strip(";").split(";")]
            value = ":".join(f"{b:02x}" for b in octets if 0 <= b <= 255)
        except ValueError:
            return None
    try:
        return normalize_mac(value)
    except ValueError:
        return None


def _read_ini(path: Path) -> configparser.RawConfigParser | None:
    # GLib key files are close enough to INI for the three keys we read; strict=False
    # tolerates repeated keys, and anything else unparsable means "skip".
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    text = _read_text(path)
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
        for path in _files(root / rel, suffix=".yaml"):
            if path.name.startswith(OURS_NETPLAN):
                continue
            text = _read_text(path)
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


# --- amazon-ec2-net-utils ---------------------------------------------------------------


def _ec2_net_utils(root: Path, mac: str, ifname: str | None) -> Iterator[str]:
    """Its files are named after the interface (``70-IFACE.network`` + ``.d``); the ``eni.conf``
    drop-in also carries the MAC, which still finds them after a rename."""
    base = root / EC2_NET_UTILS_DIR
    seen: set[str] = set()
    if ifname is not None:
        for name in (f"70-{ifname}.network", f"70-{ifname}.network.d"):
            if _exists(base / name):
                seen.add(f"70-{ifname}.network")
    for dropin in _files(base, suffix=".network.d", dirs=True):
        text = _read_text(dropin / "eni.conf")
        if text is not None and _matches_mac_line(text, mac):
            seen.add(dropin.name.removesuffix(".d"))
    for name in sorted(seen):
        iface = name.removeprefix("70-").removesuffix(".network")
        yield (
            f"amazon-ec2-net-utils: /{EC2_NET_UTILS_DIR}/{name} "
            f"(policy-routes@{iface}.service) configures this NIC"
        )


def _matches_mac_line(text: str, mac: str) -> bool:
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or key.strip() != "MACAddress":
            continue
        if any(_keyfile_mac(v) == mac for v in value.split()):
            return True
    return False


# --- files ------------------------------------------------------------------------------


def _files(directory: Path, *, suffix: str | None, dirs: bool = False) -> list[Path]:
    """Entries of DIRECTORY (sorted; none if it is unreadable), regular files or dirs."""
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return []
    out = []
    for entry in entries:
        if suffix is not None and not entry.name.endswith(suffix):
            continue
        try:
            if entry.is_dir() if dirs else entry.is_file():
                out.append(entry)
        except OSError:
            continue
    return out


def _read_text(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _exists(path: Path) -> bool:
    # lexists: amazon-ec2-net-utils' 70-IFACE.network is a symlink into /usr/lib, which may
    # not resolve under a test root (or at all, after a package removal).
    return os.path.lexists(path)
