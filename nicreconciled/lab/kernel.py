"""Kernel state of a network namespace, read with ``ip -j`` (iproute2's JSON output)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any, Literal

Family = Literal[4, 6]

#: How long one ``ip`` call may take on a loaded machine before it is an error.
IP_TIMEOUT = 20.0


class IpError(RuntimeError):
    """An ``ip`` command failed."""


def ip(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip -n NETNS ARGS``; raises IpError (with ip's message) when CHECK and it fails."""
    done = subprocess.run(
        ["ip", "-n", netns, *args], capture_output=True, text=True, timeout=IP_TIMEOUT
    )
    if check and done.returncode != 0:
        raise IpError(f"ip -n {netns} {' '.join(args)}: {done.stderr.strip()}")
    return done


def ip_batch(netns: str, commands: list[list[str]]) -> None:
    """Several ``ip`` commands in one process (``ip -batch -``); stops at the first error."""
    script = "".join(" ".join(command) + "\n" for command in commands)
    done = subprocess.run(
        ["ip", "-n", netns, "-batch", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=IP_TIMEOUT,
    )
    if done.returncode != 0:
        raise IpError(f"ip -n {netns} -batch: {done.stderr.strip()}\n{script}")


def ip_json(netns: str, *args: str) -> Any:
    """``ip -n NETNS -j ARGS``, decoded; ``[]`` when ip printed nothing."""
    done = ip(netns, "-j", *args)
    text = done.stdout.strip()
    return json.loads(text) if text else []


@dataclass(frozen=True)
class Address:
    """One address as the kernel lists it (``ip -j addr``), in the kernel's order."""

    ifname: str
    family: Family
    local: str
    prefixlen: int
    scope: str
    #: IPv4: not the link's primary address for its subnet (``secondary`` flag).
    secondary: bool
    tentative: bool
    dynamic: bool

    @property
    def cidr(self) -> str:
        return f"{self.local}/{self.prefixlen}"

    @property
    def link_local(self) -> bool:
        return self.scope == "link"


def addresses(netns: str, ifname: str | None = None, family: Family | None = None) -> list[Address]:
    """Addresses of IFNAME (every link when None), optionally of one family."""
    args = ["addr", "show"]
    if family is not None:
        args.insert(0, f"-{family}")
    if ifname is not None:
        args += ["dev", ifname]
    return parse_addresses(ip_json(netns, *args), family)


def parse_addresses(links: Any, family: Family | None = None) -> list[Address]:
    out: list[Address] = []
    for link in links:
        for info in link.get("addr_info", []):
            fam: Family = 4 if info.get("family") == "inet" else 6
            if "local" not in info or (family is not None and fam != family):
                continue
            out.append(
                Address(
                    ifname=link.get("ifname", ""),
                    family=fam,
                    local=info["local"],
                    prefixlen=int(info.get("prefixlen", 0)),
                    scope=str(info.get("scope", "")),
                    secondary=bool(info.get("secondary", False)),
                    tentative=bool(info.get("tentative", False)),
                    dynamic=bool(info.get("dynamic", False)),
                )
            )
    return out


def kernel_primary_ipv4(netns: str, ifname: str) -> str | None:
    """The link's primary IPv4 (the first IPv4 without the ``secondary`` flag), or None."""
    for addr in addresses(netns, ifname, 4):
        if not addr.secondary:
            return addr.local
    return None


@dataclass(frozen=True)
class Rule:
    priority: int
    src: str | None
    src_len: int | None
    table: str
    raw: dict[str, Any]


def rules(netns: str, family: Family, table: int | str | None = None) -> list[Rule]:
    """Policy routing rules of one family (only those looking up TABLE when given)."""
    out = []
    for raw in ip_json(netns, f"-{family}", "rule", "show"):
        rule = Rule(
            priority=int(raw.get("priority", 0)),
            src=raw.get("src"),
            src_len=raw.get("srclen"),
            table=str(raw.get("table", "")),
            raw=raw,
        )
        if table is None or rule.table == str(table):
            out.append(rule)
    return out


def rule_sources(netns: str, family: Family, table: int | str) -> set[str]:
    """The ``from`` addresses of TABLE's rules (``all`` for a rule without one)."""
    return {r.src or "all" for r in rules(netns, family, table)}


def routes(netns: str, family: Family, table: int | str = "main") -> list[dict[str, Any]]:
    """Routes of TABLE (``ip -j route show table T``); [] for a table that does not exist."""
    done = ip(netns, "-j", f"-{family}", "route", "show", "table", str(table), check=False)
    if done.returncode != 0:
        if "does not exist" in done.stderr or "FIB table does not exist" in done.stderr:
            return []
        raise IpError(f"ip -n {netns} route show table {table}: {done.stderr.strip()}")
    text = done.stdout.strip()
    result: list[dict[str, Any]] = json.loads(text) if text else []
    return result


def gateways(route: dict[str, Any]) -> set[str | None]:
    """The gateways of an ``ip -j`` route: each next hop's for a multipath route."""
    return {hop.get("gateway") for hop in route.get("nexthops") or [route]}


def route_destinations(netns: str, family: Family, table: int | str) -> dict[str, str | None]:
    """Destination -> gateway of TABLE's routes (``default`` for the default route); of
    several routes to one destination, the one the kernel prefers (lowest metric)."""
    ranked = sorted(routes(netns, family, table), key=lambda r: -int(r.get("metric", 0)))
    return {r.get("dst", ""): r.get("gateway") for r in ranked}


def link_exists(netns: str, ifname: str) -> bool:
    return ip(netns, "link", "show", "dev", ifname, check=False).returncode == 0


def describe(netns: str) -> str:
    """Human-readable addresses, rules and routes (for failure messages)."""
    parts = []
    for title, args in (
        ("addresses", ["-br", "addr"]),
        ("rules v4", ["-4", "rule"]),
        ("rules v6", ["-6", "rule"]),
        ("routes v4 (all tables, no local)", ["-4", "route", "show", "table", "all"]),
        ("routes v6 (all tables, no local)", ["-6", "route", "show", "table", "all"]),
    ):
        done = ip(netns, *args, check=False)
        lines = [
            line
            for line in (done.stdout + done.stderr).splitlines()
            if not line.startswith(("local ", "multicast ", "anycast ", "broadcast "))
            and "table local" not in line
        ]
        parts.append(f"--- {title} in {netns}\n" + "\n".join(lines))
    return "\n".join(parts)
