"""Find other tools that already configure a NIC we are about to manage.

Two configurations for one NIC do not merge, they compete: NetworkManager activates one of
the profiles that match the device (by autoconnect priority, then by last use), netplan
merges same-named definitions and renders both of two definitions that match one device,
and a hotplug hook re-renders the NIC behind our back on every attach. The result changes
from boot to boot. ``find_conflicts`` names each such configuration in one line, prefixed
by the tool (``networkmanager:``, ``netplan:``, ``amazon-ec2-net-utils:``,
``systemd-networkd:``, ``cloud-init:``);
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
* systemd-networkd ``.network`` files of other origin (/etc, /run, /usr/lib, /lib
  systemd/network) that match the NIC by MAC (``MACAddress=``, ``PermanentMACAddress=``) or
  by its exact name, or that match every NIC by a name glob and sort before our files:
  networkd applies only the first matching file (lexical order of the names) and ignores
  the others. Remove that file or narrow its ``[Match]``. netplan's generated
  ``10-netplan-*`` files are reported through their YAML (above), amazon-ec2-net-utils'
  through that tool.
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
#: Its file name prefixes: upstream, and Debian's package (update-networkd-priorities.patch).
EC2_NET_UTILS_PREFIXES: Final = ("70-", "07-")
EC2_NET_UTILS_RULE: Final = "99-vpc-policy-routes.rules"
EC2_NET_UTILS_UNIT: Final = "policy-routes@.service"
UDEV_RULE_DIRS: Final = ("usr/lib/udev/rules.d", "lib/udev/rules.d")
#: A same-named rule here replaces (a link to /dev/null: masks) the packaged one.
UDEV_OVERRIDE_DIRS: Final = ("etc/udev/rules.d", "run/udev/rules.d")
UNIT_OVERRIDE_DIRS: Final = ("etc/systemd/system", "run/systemd/system")
#: systemd-networkd's directories, highest precedence first (a same-named file masks later ones).
NETWORKD_DIRS: Final = (
    "etc/systemd/network",
    "run/systemd/network",
    "usr/local/lib/systemd/network",
    "usr/lib/systemd/network",
    "lib/systemd/network",
)
CLOUD_INIT_HOTPLUG_RULE: Final = "etc/udev/rules.d/90-cloud-init-hook-hotplug.rules"

#: Our own files: NetworkManagerRenderer, NetplanRenderer, NetworkdRenderer.
OURS_NM: Final = "nicreconciled-"
OURS_NETPLAN: Final = "90-nicreconciled-"
OURS_NETWORKD: Final = "05-nicreconciled-"
#: networkd files netplan generates (reported through their YAML, see NETPLAN_GENERATED_NM).
NETPLAN_GENERATED_NETWORKD: Final = "10-netplan-"
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
    ec2_net_utils = list(_ec2_net_utils(root, mac, ifname))
    found += ec2_net_utils
    found += _networkd(root, mac, ifname)
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
    """Its files are named after the interface (``70-IFACE.network`` + ``.d``, ``07-`` in
    Debian's package); the ``eni.conf`` drop-in also carries the MAC, which still finds them
    after a rename. Without any file yet, its udev rule (the tool will write them)."""
    base = root / EC2_NET_UTILS_DIR
    seen: set[str] = set()
    if ifname is not None:
        for prefix in EC2_NET_UTILS_PREFIXES:
            for name in (f"{prefix}{ifname}.network", f"{prefix}{ifname}.network.d"):
                if _exists(base / name):
                    seen.add(f"{prefix}{ifname}.network")
    for dropin in _files(base, suffix=".network.d", dirs=True):
        if not dropin.name.startswith(EC2_NET_UTILS_PREFIXES):
            continue
        text = _read_text(dropin / "eni.conf")
        if text is not None and _matches_mac_line(text, mac):
            seen.add(dropin.name.removesuffix(".d"))
    for name in sorted(seen):
        iface = name[3:].removesuffix(".network")
        yield (
            f"amazon-ec2-net-utils: /{EC2_NET_UTILS_DIR}/{name} "
            f"(policy-routes@{iface}.service) configures this NIC"
        )
    rule = None if seen else _ec2_net_utils_rule(root)
    if rule is not None:
        unit = f"policy-routes@{ifname}.service" if ifname else EC2_NET_UTILS_UNIT
        yield (
            f"amazon-ec2-net-utils: /{rule} starts {unit} for every ena, ixgbevf or vif NIC "
            "that is attached"
        )


def _ec2_net_utils_rule(root: Path) -> str | None:
    """The packaged udev rule that starts ``policy-routes@``, unless it or the unit is
    masked (overridden by a link to /dev/null or an empty file)."""
    if any(_masked(root / d / EC2_NET_UTILS_UNIT) for d in UNIT_OVERRIDE_DIRS):
        return None
    for rel in UDEV_OVERRIDE_DIRS:
        override = root / rel / EC2_NET_UTILS_RULE
        if _exists(override):
            return None if _masked(override) else f"{rel}/{EC2_NET_UTILS_RULE}"
    for rel in UDEV_RULE_DIRS:
        if _exists(root / rel / EC2_NET_UTILS_RULE):
            return f"{rel}/{EC2_NET_UTILS_RULE}"
    return None


def _masked(path: Path) -> bool:
    try:
        if path.is_symlink():
            return os.readlink(path) == os.devnull
        return path.is_file() and path.stat().st_size == 0
    except OSError:
        return False


def _matches_mac_line(text: str, mac: str) -> bool:
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or key.strip() != "MACAddress":
            continue
        if any(_keyfile_mac(v) == mac for v in value.split()):
            return True
    return False


# --- systemd-networkd -------------------------------------------------------------------


def _networkd(root: Path, mac: str, ifname: str | None) -> Iterator[str]:
    """Other ``.network`` files that match the NIC (see the module docstring)."""
    seen: set[str] = set()
    for rel in NETWORKD_DIRS:
        try:
            entries = sorted(e for e in (root / rel).iterdir() if e.name.endswith(".network"))
        except OSError:
            continue
        for path in entries:
            if path.name in seen:
                continue  # masked by the same name in a directory of higher precedence
            seen.add(path.name)  # a link to /dev/null masks too, and is no file to read
            if path.name.startswith((OURS_NETWORKD, NETPLAN_GENERATED_NETWORKD)):
                continue
            if _ec2_net_utils_file(root / rel, path.name):
                continue
            text = _read_text(path) if _is_file(path) else None
            if text is None:
                continue
            reason = _networkd_reason(_match_section(text), path.name, mac, ifname)
            if reason is not None:
                yield f"systemd-networkd: /{rel}/{path.name} {reason}"


def _ec2_net_utils_file(directory: Path, name: str) -> bool:
    """One of amazon-ec2-net-utils' files (reported as that tool): its name and a drop-in
    directory, or a link to the package's ``80-ec2.network``."""
    if not name.startswith(EC2_NET_UTILS_PREFIXES):
        return False
    if _exists(directory / f"{name}.d"):
        return True
    try:
        return os.readlink(directory / name).endswith("/80-ec2.network")
    except OSError:
        return False


def _match_section(text: str) -> dict[str, list[str]]:
    """The ``[Match]`` keys of a unit-style file: each key's words, lists merged across
    repeated lines, an empty assignment resetting the list (systemd's rules)."""
    values: dict[str, list[str]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        key, sep, value = line.partition("=")
        if section != "Match" or not sep:
            continue
        words = value.split()
        if words:
            values.setdefault(key.strip(), []).extend(words)
        else:
            values[key.strip()] = []
    return values


def _networkd_reason(
    match: dict[str, list[str]], name: str, mac: str, ifname: str | None
) -> str | None:
    for key in ("MACAddress", "PermanentMACAddress"):
        if any(_networkd_mac(word) == mac for word in match.get(key, [])):
            return f"matches {key}={mac}"
    names = match.get("Name", [])
    if not names or ifname is None:
        return None
    inverted = names[0].startswith("!")
    patterns = [n.removeprefix("!") for n in names]
    hit = any(fnmatch.fnmatchcase(ifname, p) for p in patterns)
    if inverted or not hit:
        return None
    if ifname in patterns:
        return f"matches Name={ifname}"
    # A glob: a catch-all of the host. It matters only when it sorts before our files.
    if name < OURS_NETWORKD:
        pattern = next(p for p in patterns if fnmatch.fnmatchcase(ifname, p))
        return f"matches Name={pattern} and sorts before {OURS_NETWORKD}*.network"
    return None


def _networkd_mac(word: str) -> str | None:
    """A MAC in any of networkd's notations (colons, dashes, or ``1234.5678.90ab``)."""
    if "." in word:
        groups = word.split(".")
        if len(groups) != 3 or not all(len(g) == 4 for g in groups):
            return None
        word = ":".join(g[i : i + 2] for g in groups for i in (0, 2))
    try:
        return normalize_mac(word)
    except ValueError:
        return None


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


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


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
