"""find_conflicts in systemd-networkd's directories: amazon-ec2-net-utils (its files, in
all their shapes, and its udev rule before it wrote any) and other ``.network`` files that
match the NIC (google-guest-agent's are left to conflicts_gce.py). Why each of them competes
with us, and what to do: conflicts.py.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from nicreconciled.conflicts_files import exists, files, is_file, keyfile_mac, masked, read_text
from nicreconciled.model import normalize_mac

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

#: Our own files (NetworkdRenderer).
OURS_NETWORKD: Final = "05-nicreconciled-"
#: networkd files netplan generates (reported through their YAML: conflicts.py).
NETPLAN_GENERATED_NETWORKD: Final = "10-netplan-"
#: google-guest-agent's own (``20-IF-`` and the older ``1-IF-``; reported as that tool by
#: conflicts_gce.py).
GOOGLE_GUEST_AGENT_NETWORKD: Final = re.compile(r"[0-9]+-.+-google-guest-agent\.network")


# --- amazon-ec2-net-utils ---------------------------------------------------------------


def ec2_net_utils(root: Path, mac: str, ifname: str | None) -> Iterator[str]:
    """Its files are named after the interface (``70-IFACE.network`` + ``.d``, ``07-`` in
    Debian's package); the ``eni.conf`` drop-in also carries the MAC, which still finds them
    after a rename. Without any file yet, its udev rule (the tool will write them)."""
    base = root / EC2_NET_UTILS_DIR
    seen: set[str] = set()
    if ifname is not None:
        for prefix in EC2_NET_UTILS_PREFIXES:
            for name in (f"{prefix}{ifname}.network", f"{prefix}{ifname}.network.d"):
                if exists(base / name):
                    seen.add(f"{prefix}{ifname}.network")
    for dropin in files(base, suffix=".network.d", dirs=True):
        if not dropin.name.startswith(EC2_NET_UTILS_PREFIXES):
            continue
        text = read_text(dropin / "eni.conf")
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
    if any(masked(root / d / EC2_NET_UTILS_UNIT) for d in UNIT_OVERRIDE_DIRS):
        return None
    for rel in UDEV_OVERRIDE_DIRS:
        override = root / rel / EC2_NET_UTILS_RULE
        if exists(override):
            return None if masked(override) else f"{rel}/{EC2_NET_UTILS_RULE}"
    for rel in UDEV_RULE_DIRS:
        if exists(root / rel / EC2_NET_UTILS_RULE):
            return f"{rel}/{EC2_NET_UTILS_RULE}"
    return None


def _matches_mac_line(text: str, mac: str) -> bool:
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or key.strip() != "MACAddress":
            continue
        if any(keyfile_mac(v) == mac for v in value.split()):
            return True
    return False


# --- systemd-networkd -------------------------------------------------------------------


def networkd(root: Path, mac: str, ifname: str | None) -> Iterator[str]:
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
            if GOOGLE_GUEST_AGENT_NETWORKD.fullmatch(path.name):
                continue
            text = read_text(path) if is_file(path) else None
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
    if exists(directory / f"{name}.d"):
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
