"""Living beside other programs' rules and routes on systemd-networkd.

systemd-networkd removes routing policy rules and routes it did not configure itself
("foreign"), at start and whenever it configures a link: networkd.conf's
``ManageForeignRoutingPolicyRules=`` (v249+) and ``ManageForeignRoutes=`` (v246+), both on by
default. So loading a hot-plugged NIC's file makes networkd delete every other program's
rules on the host (measured: a ``fwmark 0x80 lookup 200`` rule gone 0.7-0.9 s after the
plug, networkd 252 and 257); a container network plug-in's policy routing breaks with every
NIC we configure. NetworkManager leaves foreign rules alone.

The choice, on that evidence: networkd itself must be told. The package ships a drop-in
(``/usr/lib/systemd/networkd.conf.d/60-nicreconciled.conf``) that turns both off, as
Bottlerocket and EKS-style hosts do; networkd reads it when it starts. The daemon cannot put
the rules back itself: that would need CAP_NET_ADMIN, which its unit does not have, and a
rule restored after networkd removed it is one networkd removes again at the next link it
configures. What the daemon does: at start, on networkd hosts, it works out what networkd's
configuration files say and warns once, naming the rules at risk and the fix, when networkd
will still remove foreign rules. The trade-off (README, "Coexistence"): with the drop-in,
networkd no longer cleans up rules and routes left behind by a program that did not remove
its own, and a rule networkd configured before a restart under an old ``.network`` file is
left in place.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path

import structlog

from nicreconciled.system import rtnl
from nicreconciled.system.rtnl import KRule

log = structlog.get_logger(__name__)

#: networkd.conf's directories, in order of precedence (a drop-in name in an earlier one
#: masks the same name in a later one; the main file is the first found).
CONF_DIRS = ("etc/systemd", "run/systemd", "usr/local/lib/systemd", "usr/lib/systemd")
KEYS = ("ManageForeignRoutingPolicyRules", "ManageForeignRoutes")
#: The drop-in the package ships (contrib/networkd/60-nicreconciled.conf).
DROP_IN = "usr/lib/systemd/networkd.conf.d/60-nicreconciled.conf"
#: What it says (a test checks contrib/networkd/ against it; the lab installs it).
DROP_IN_TEXT = "[Network]\nManageForeignRoutingPolicyRules=no\nManageForeignRoutes=no\n"
FIX = (
    "set ManageForeignRoutingPolicyRules=no and ManageForeignRoutes=no in [Network] of a"
    " networkd.conf drop-in (the package ships /" + DROP_IN + "), then restart"
    " systemd-networkd"
)

_TRUE = {"1", "yes", "y", "true", "t", "on"}
_FALSE = {"0", "no", "n", "false", "f", "off"}


@dataclass(frozen=True)
class ForeignPolicy:
    """What networkd's configuration files say (True: networkd removes foreign ones)."""

    rules: bool = True
    routes: bool = True
    #: The files read, in the order applied.
    files: tuple[str, ...] = ()


def _files(root: Path) -> list[Path]:
    main = next(
        (root / d / "networkd.conf" for d in CONF_DIRS if (root / d / "networkd.conf").is_file()),
        None,
    )
    drop_ins: dict[str, Path] = {}
    for d in CONF_DIRS:
        directory = root / d / "networkd.conf.d"
        try:
            names = sorted(p.name for p in directory.iterdir() if p.name.endswith(".conf"))
        except OSError:
            continue
        for name in names:
            drop_ins.setdefault(name, directory / name)
    return ([main] if main else []) + [drop_ins[n] for n in sorted(drop_ins)]


def networkd_policy(root: Path = Path("/")) -> ForeignPolicy:
    """ManageForeignRoutingPolicyRules= and ManageForeignRoutes= as networkd will read them."""
    values = {key: True for key in KEYS}
    read: list[str] = []
    for path in _files(root):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            parser.read_string(path.read_text(errors="replace"), source=str(path))
        except (OSError, configparser.Error):
            continue
        read.append(str(path))
        if not parser.has_section("Network"):
            continue
        for key in KEYS:
            raw = parser.get("Network", key, fallback="").strip().lower()
            if raw in _TRUE:
                values[key] = True
            elif raw in _FALSE:
                values[key] = False
            elif raw == "" and parser.has_option("Network", key):
                values[key] = True  # an empty assignment resets to the default
    return ForeignPolicy(values[KEYS[0]], values[KEYS[1]], tuple(read))


#: (family, priority, table) of the rules every kernel starts with: never anyone's.
_KERNEL_RULES = {(2, 0, 255), (2, 32766, 254), (2, 32767, 253), (10, 0, 255), (10, 32766, 254)}


def at_risk(rules: list[KRule]) -> list[str]:
    """The rules a networkd that manages foreign rules would remove (``ip rule`` style)."""
    return [r.describe() for r in rules if (r.family, r.priority, r.table) not in _KERNEL_RULES]


def warn_if_at_risk(root: Path = Path("/")) -> ForeignPolicy:
    """At start on a networkd host: one warning when networkd will still remove rules that
    are in the kernel now (they would go at our next apply). Never fails."""
    policy = networkd_policy(root)
    if not policy.rules:
        return policy
    try:
        rules = at_risk(rtnl.dump_rules())
    except OSError as exc:
        log.debug("foreign_rules_unreadable", error=str(exc))
        return policy
    if rules:
        log.warning(
            "foreign_rules_at_risk",
            rules=rules,
            manage_foreign_rules=policy.rules,
            manage_foreign_routes=policy.routes,
            fix=FIX,
        )
    return policy
