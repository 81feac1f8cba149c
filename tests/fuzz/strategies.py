"""Hypothesis strategies: each cloud's metadata document, valid in shape, hostile in value.

Every document strategy draws the *shape* of its cloud's metadata (EC2's per-key answers
and the MAC's directory listing, OCI's ``vnics/`` array, OpenStack's ``network_data.json``,
CloudStack's virtual-router answers with the NIC's DHCP lease) and then spoils part of it.
How much is drawn once per document (``Spoiler``): nothing, exactly one value, about a sixth
or about half of them; the shrinker moves towards "nothing", so a failure shrinks to the
one value that matters. A spoilt value is a mutation of the valid one (``mutated``): a
control character, a look-alike (fullwidth or Arabic-Indic digits, a fullwidth colon,
Cyrillic letters, zero-width and bidi characters), a YAML/INI metacharacter (``: # [ ] ; {``,
newline, ``\\``), a ``%scope`` or ``/len`` suffix, blanks around it, a duplicate, a huge
repetition, nothing at all; in JSON also a value of another type, null, a key left out,
nesting deeper than the parser's stack. The valid values are hostile too: addresses
anywhere (special ranges, a subnet's network and broadcast address, outside the subnet),
duplicate addresses and overlapping networks, both families mixed, numbers at and past
their limits, lists longer than the parsers allow. One JSON document in ten is replaced by
garbage (``garbage_documents``): deep nesting, truncation, junk JSON, NaN, 5,000-digit
numbers, more than a MiB, random bytes.

``nic_states`` draws any NicState the model accepts, not only what a parser builds, for
the renderers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from nicreconciled.model import MAX_TABLE, MIN_TABLE, NicState, StaticRoute
from nicreconciled.sources import aliyun_parse, ec2_parse
from nicreconciled.sources.common import MAX_DOCUMENT
from nicreconciled.sources.leases import Lease, parse_networkd_lease

Draw = Callable[[st.SearchStrategy[Any]], Any]
Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address

# --- characters and text ------------------------------------------------------------------

CONTROL = "\x00\x01\x07\x08\t\x0b\x0c\r\x1b\x1f\x7f\x85\x9f"
#: What YAML, INI (GLib key files, systemd units) and the parsers give a meaning to.
META = ":#[]{};,\n\\%\"'&*!|>@`= /"
#: Blanks str.strip() removes and those it does not; bidi, BOM, a lone surrogate, case traps.
ODD = "\u00a0\u1680\u2028\u2029\u200b\u200d\ufeff\u202e\u3000\ud800\u00df\u0130\u212a"


def _lookalikes() -> dict[str, str]:
    """Character -> characters that look like it (or that int()/str.isdigit() accept)."""
    table = {str(d): chr(0xFF10 + d) + chr(0x0660 + d) + chr(0x1D7CE + d) for d in range(10)}
    table.update(
        {
            ":": "\uff1a\ua789\u2236",
            ".": "\uff0e\u3002\u2024",
            "/": "\u2044\uff0f\u2215",
            "-": "\u2010\u2212\uff0d",
            "a": "\u0430\uff41",
            "c": "\u0441",
            "e": "\u0435",
            "f": "\uff46",
            "i": "\u0456",
            "o": "\u043e",
        }
    )
    return table


LOOKALIKE = _lookalikes()
HOSTILE_CHARS = sorted(set(CONTROL + META + ODD + "".join(LOOKALIKE.values())))

hostile_chars = st.sampled_from(HOSTILE_CHARS)
#: Short text of hostile and arbitrary characters.
hostile_text = st.text(hostile_chars | st.characters(), max_size=24)
#: Random bytes as a metadata service might send them (decoded as the client would).
garbage_text = st.binary(max_size=48).map(lambda b: b.decode("utf-8", "replace")) | st.binary(
    max_size=48
).map(lambda b: b.decode("latin-1"))

PADS = ("", " ", "\t", "\r", "\n", "\r\n", "\u00a0", "\x1c", "\u3000", "\u200b")
SUFFIXES = (
    "%eth0",
    "%25",
    "%",
    "/24",
    "/64",
    "/",
    "#",
    " # comment",
    ";",
    "; x",
    ":",
    ": x",
    "\n",
    "\\",
    "\\\n",
    "{",
    "}",
    "[",
    "]",
    "[0]",
    "\n- x",
    "'",
    '"',
    "&a",
    "*a",
    " !!str",
    "\x00",
    "\u202e",
)
MUTATIONS = (
    "insert",
    "lookalike",
    "affix",
    "suffix",
    "scope",
    "prefix",
    "duplicate",
    "case",
    "truncate",
    "replace",
    "repeat",
    "empty",
)
#: Numbers as text that a number parser may take or choke on.
NUMBER_TEXTS = (
    "",
    "-0",
    "-1",
    "+1",
    "1.0",
    "1e2",
    "0x10",
    "0b1",
    "1_0",
    "01",
    "007",
    "100",
    "256",
    "4096",
    "65536",
    "2147483648",
    "18446744073709551616",
    "9" * 5000,
    "nan",
    "inf",
    "true",
    "null",
    " 1 2",
)
BIG_INTS = (
    -(2**63),
    -(2**31),
    -1,
    0,
    1,
    67,
    68,
    99,
    100,
    255,
    256,
    4095,
    4096,
    32765,
    32766,
    65535,
    65536,
    2**31,
    2**32,
    2**63,
    2**64,
    10**30,
)
hostile_ints = st.sampled_from(BIG_INTS) | st.integers(-(2**70), 2**70)


@st.composite
def mutated(draw: Draw, value: str) -> str:
    """VALUE with one hostile change."""
    kind = draw(st.sampled_from(MUTATIONS))
    if kind == "insert":
        at = draw(st.integers(0, len(value)))
        return value[:at] + draw(hostile_chars) + value[at:]
    if kind == "lookalike":
        spots = [i for i, c in enumerate(value) if c in LOOKALIKE]
        if not spots:
            return value + draw(hostile_chars)
        at = draw(st.sampled_from(spots))
        return value[:at] + draw(st.sampled_from(LOOKALIKE[value[at]])) + value[at + 1 :]
    if kind == "affix":
        return draw(st.sampled_from(PADS)) + value + draw(st.sampled_from(PADS))
    if kind == "suffix":
        return value + draw(st.sampled_from(SUFFIXES))
    if kind == "scope":  # what ipaddress reads as an IPv6 zone ("fe80::1%eth0")
        return value + draw(st.sampled_from(("%eth0", "%1", "%", "%25", "%x y", "%#")))
    if kind == "prefix":
        return value + draw(st.sampled_from(("/0", "/24", "/32", "/64", "/128", "/129", "/")))
    if kind == "duplicate":
        return value + draw(st.sampled_from(("\n", "\r\n", " ", ",", "\n\n", ";"))) + value
    if kind == "case":
        return value.swapcase()
    if kind == "truncate":
        return value[: draw(st.integers(0, max(len(value) - 1, 0)))]
    if kind == "replace":
        return str(draw(hostile_text | garbage_text))
    if kind == "repeat":
        return value * draw(st.sampled_from((2, 3, 40, 300)))
    return ""


#: A placeholder for a JSON value nested N deep, expanded by ``dumps`` (the json module
#: cannot write what it cannot read back).
_DEEP = re.compile(r'"@@deep:([0-9]+)@@"')
deep_values = st.sampled_from((50, 900, 985, 990, 995, 2000)).map(lambda n: f"@@deep:{n}@@")
json_scalars = st.none() | st.booleans() | hostile_ints | st.floats() | hostile_text
json_junk = st.recursive(
    json_scalars | deep_values,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def dumps(draw: Draw, value: Any) -> str:
    """VALUE as JSON the way some service might write it (ASCII or not, indented or not),
    with the deep placeholders expanded."""
    text = json.dumps(
        value, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from((None, 1)))
    )
    return _DEEP.sub(lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), text)


#: Left out of the document (a key not written at all).
ABSENT: Any = object()


class Spoiler:
    """How hostile one document is, drawn once: clean (3 in 8), exactly one of about VALUES
    values spoilt (3 in 8), three of them (1 in 8), each with a chance of one half (1 in 8).
    Shrinks towards clean; only the last costs a draw per value."""

    def __init__(self, draw: Draw, values: int) -> None:
        self._draw = draw
        level = draw(st.integers(0, 7))
        self.level = 0 if level < 3 else 1 if level < 6 else level - 4
        top = max(values - 1, 0)
        count = {0: 0, 1: 1, 2: 3}.get(self.level, 0)
        self._targets = {draw(st.integers(0, top)) for _ in range(count)}
        self._seen = 0

    def hit(self) -> bool:
        seen, self._seen = self._seen, self._seen + 1
        if self.level < 3:
            return seen in self._targets
        return bool(self._draw(st.booleans()))

    def text(self, value: str) -> str:
        return str(self._draw(mutated(value))) if self.hit() else value

    def number(self, value: str) -> str:
        if not self.hit():
            return value
        if self._draw(st.booleans()):
            return str(self._draw(st.sampled_from(NUMBER_TEXTS) | hostile_ints.map(str)))
        return str(self._draw(mutated(value)))

    def json(self, value: Any) -> Any:
        """VALUE, or (when hit) a mutation of it, a value of another type, null or ABSENT."""
        if not self.hit():
            return value
        choice = self._draw(st.integers(0, 4))
        if choice == 0 and isinstance(value, str):
            return self._draw(mutated(value))
        listed = choice == 0 and isinstance(value, list)
        texts = [i for i, v in enumerate(value) if isinstance(v, str)] if listed else []
        if texts:  # one text of a list (not a junk value that replaced an entry)
            at = self._draw(st.sampled_from(texts))
            return [*value[:at], self._draw(mutated(value[at])), *value[at + 1 :]]
        if choice == 1:
            return self._draw(hostile_ints | st.sampled_from(NUMBER_TEXTS))
        if choice == 2:
            return self._draw(json_junk)
        if choice == 3:
            return None
        return ABSENT


def present(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if v is not ABSENT}


@st.composite
def garbage_documents(draw: Draw, valid: str) -> str:
    """A document that is no longer the cloud's: VALID broken, or something else."""
    kind = draw(
        st.sampled_from(
            ("deep", "truncated", "junk", "text", "huge", "bigint", "nan", "insert", "bom")
        )
    )
    if kind == "deep":
        depth = draw(st.sampled_from((10, 900, 990, 1000, 5000, 100_000)))
        if draw(st.booleans()):
            return "[" * depth + "]" * depth
        return '{"a":' * depth + "1" + "}" * depth
    if kind == "truncated":
        return valid[: draw(st.integers(0, len(valid)))]
    if kind == "junk":
        return dumps(draw, draw(json_junk))
    if kind == "text":
        return str(draw(hostile_text | garbage_text))
    if kind == "huge":
        return "[" + " " * (MAX_DOCUMENT + draw(st.integers(-2, 2))) + "]"
    if kind == "bigint":
        return "[" + "9" * draw(st.sampled_from((4300, 4301, 10_000))) + "]"
    if kind == "nan":
        return draw(st.sampled_from(("[NaN]", "[Infinity, -Infinity]", "NaN", '{"links": NaN}')))
    if kind == "insert":
        at = draw(st.integers(0, len(valid)))
        return valid[:at] + draw(hostile_chars) + valid[at:]
    return "\ufeff" + valid


# --- addresses, networks, MACs ---------------------------------------------------------


COMMON4 = (24, 16, 20, 26, 28, 30, 24, 24)
COMMON6 = (64, 48, 56, 80, 96, 124, 64, 64)


def prefix_length(draw: Draw, common: tuple[int, ...], top: int) -> int:
    """One of COMMON (a cloud's usual sizes), any length 0..TOP in about a fifth of draws;
    one draw, shrinking towards COMMON[0]."""
    index = draw(st.integers(0, len(common) + (top + 1) // 4))
    if index < len(common):
        return common[index]
    return draw(st.integers(0, top))  # type: ignore[no-any-return]


SPECIAL = {
    4: tuple(
        IPv4Address(a)
        for a in (
            "10.0.0.0",
            "0.0.0.0",
            "127.0.0.1",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "100.64.0.1",
            "192.0.2.1",
        )
    ),
    6: tuple(
        IPv6Address(a)
        for a in (
            "2001:db8::",
            "::",
            "::1",
            "fe80::",
            "ff02::1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "fd00:ec2::254",
        )
    ),
}


def any_address(draw: Draw, version: int) -> Address:
    """Any address of the family; a special one (unspecified, loopback, link-local,
    multicast, broadcast, mapped) in about a quarter of the draws. Cheaper than st.ip_addresses."""
    special = SPECIAL[version]
    index = draw(st.integers(0, 4 * len(special) - 1))
    if index < len(special):
        return special[index]
    bits = draw(st.integers(0, 2 ** (32 if version == 4 else 128) - 1))
    return IPv4Address(bits) if version == 4 else IPv6Address(bits)


@st.composite
def subnets4(draw: Draw) -> IPv4Network:
    """Mostly the sizes clouds use, anywhere (hypothesis favours the special ranges)."""
    return IPv4Network((any_address(draw, 4), prefix_length(draw, COMMON4, 32)), strict=False)


@st.composite
def subnets6(draw: Draw) -> IPv6Network:
    return IPv6Network((any_address(draw, 6), prefix_length(draw, COMMON6, 128)), strict=False)


def host(draw: Draw, net: Network) -> Address:
    """An address of NET, its network and broadcast address included; in about one draw
    of eight (more for the smallest networks) one just above NET. One draw."""
    size = net.num_addresses
    offset = draw(st.integers(0, size - 1 + max(size // 7, 1)))
    top = 2**net.max_prefixlen
    return type(net.network_address)((int(net.network_address) + offset) % top)


def first_host(net: Network) -> Address:
    """NET's first host address (where clouds put the router); wraps at the top."""
    return type(net.network_address)((int(net.network_address) + 1) % 2**net.max_prefixlen)


def address_lines(draw: Draw, net: Network, low: int, high: int) -> str:
    """LOW..HIGH addresses of NET one per line, a duplicate or a blank line now and then."""
    items = [str(host(draw, net)) for _ in range(draw(st.integers(low, high)))]
    extra = draw(st.integers(0, 9)) if items else 0
    if extra >= 8:  # a duplicate, or a blank entry
        item = items[-1] if extra == 8 else draw(st.sampled_from(("", " ", "\t")))
        items.insert(draw(st.integers(0, len(items))), item)
    return "\n".join(items)


def many_lines(draw: Draw, version: int, prefix: int | None = None) -> str:
    """Around MAX_ADDRESSES distinct entries (the limit, one more, far more)."""
    count = draw(st.sampled_from((16, 17, 32, 33, 256, 257, 600)))
    base = int(any_address(draw, version))
    top = 2**32 if version == 4 else 2**128
    kind = IPv4Address if version == 4 else IPv6Address
    entries = [kind((base + i * 256) % top) for i in range(count)]
    if prefix is None:
        return "\n".join(str(e) for e in entries)
    return "\n".join(f"{e}/{prefix}" for e in entries)


def inner_networks(draw: Draw, net: Network, low: int, high: int, prefix: int) -> list[Network]:
    """LOW..HIGH networks of length PREFIX inside NET where it fits (else anywhere)."""
    out: list[Network] = []
    for _ in range(draw(st.integers(low, high))):
        length = (
            max(prefix, net.prefixlen)
            if draw(st.integers(0, 5))
            else draw(st.integers(0, net.max_prefixlen))
        )
        out.append(type(net)((host(draw, net), length), strict=False))
    return out


MAC_POOL = (
    "0e:5c:3a:91:0b:7f",
    "0e:5c:3a:91:0b:01",
    "02:00:17:0d:6b:be",
    "fa:16:3e:11:22:01",
    "0a:00:00:00:00:02",
    "00:00:00:00:00:00",
    "ff:ff:ff:ff:ff:ff",
    "01:00:5e:00:00:01",
)
#: Valid MACs in the normal form: a pool (so that documents collide) and any others.
macs = st.sampled_from(MAC_POOL) | st.binary(min_size=6, max_size=6).map(
    lambda b: ":".join(f"{x:02x}" for x in b)
)


@st.composite
def mac_spellings(draw: Draw, mac: str) -> str:
    """MAC as a service or sysfs may spell it (what normalize_mac accepts)."""
    dashed = mac.replace(":", "-")
    return str(draw(st.sampled_from((mac, mac.upper(), dashed, f" {dashed.upper()}\n"))))


HEX = "0123456789abcdef"
ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"


def uuid_text(draw: Draw) -> str:
    """A UUID's text form from one draw (a draw per character is slow)."""
    digits = f"{draw(st.integers(0, 2**128 - 1)):032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def hex_text(draw: Draw, low: int, high: int) -> str:
    """LOW..HIGH hex digits, two draws."""
    length = draw(st.integers(low, high))
    return f"{draw(st.integers(0, 16**length - 1)):0{length}x}"


def id_text(draw: Draw, high: int) -> str:
    """1..HIGH characters of ID_CHARS from two draws."""
    number = draw(st.integers(0, len(ID_CHARS) ** high - 1))
    out = ID_CHARS[number % len(ID_CHARS)]
    number //= len(ID_CHARS)
    while number:
        number, digit = divmod(number, len(ID_CHARS))
        out += ID_CHARS[digit]
    return out


# --- EC2 ----------------------------------------------------------------------------------

EC2_EXTRA = (
    "mac",
    "owner-id",
    "security-group-ids",
    "subnet-id",
    "vpc-id",
    "vpc-ipv4-cidr-blocks",
    "security-groups/",
    "ipv6s/",
    "../../etc/",
    "local-ipv4s/",
)


@dataclass(frozen=True)
class Ec2Doc:
    """parse_nic's arguments: the MAC, its directory listing, the answers of its keys
    (None = 404), the instance's primary MAC."""

    mac: str
    listing: str
    raw: dict[str, str | None]
    primary_mac: str


@st.composite
def ec2_documents(draw: Draw) -> Ec2Doc:
    mac = draw(macs)
    primary = mac if draw(st.booleans()) else draw(macs)
    net4, net6 = draw(subnets4()), draw(subnets6())
    spoil = Spoiler(draw, len(ec2_parse.WANTED) + 3)
    card = draw(st.sampled_from((0, 0, 0, 1, 99)))
    values = {
        "device-number": spoil.number(str(draw(st.integers(0, 99)))),
        "network-card": spoil.number(str(card)),
        "interface-id": spoil.text("eni-" + hex_text(draw, 8, 17)),
        "local-ipv4s": spoil.text(address_lines(draw, net4, 1, 4)),
        "subnet-ipv4-cidr-block": spoil.text(str(net4)),
        "ipv6s": spoil.text(address_lines(draw, net6, 0, 3)),
        "subnet-ipv6-cidr-blocks": spoil.text(
            "\n".join(str(n) for n in [net6, *inner_networks(draw, net6, 0, 2, 64)])
        ),
        "ipv4-prefix": spoil.text("\n".join(str(n) for n in inner_networks(draw, net4, 0, 2, 28))),
        "ipv6-prefix": spoil.text("\n".join(str(n) for n in inner_networks(draw, net6, 0, 2, 80))),
    }
    if spoil.hit():  # more entries than the parser allows
        listed = ("local-ipv4s", "ipv6s", "subnet-ipv6-cidr-blocks", "ipv4-prefix")
        key = draw(st.sampled_from(listed))
        version = 6 if "6" in key else 4
        length = {"subnet-ipv6-cidr-blocks": 64, "ipv4-prefix": 28}.get(key)
        values[key] = many_lines(draw, version, length)
    # One key not listed (in about half the documents), or none of the IPv4 keys (the shape
    # of an ENI of an IPv6-only subnet).
    left_out = draw(st.integers(0, 2 * len(ec2_parse.WANTED)))
    names = [key for i, key in enumerate(ec2_parse.WANTED) if i != left_out]
    if left_out == 2 * len(ec2_parse.WANTED):
        names = [key for key in names if key not in ec2_parse.IPV4_KEYS]
    names += draw(st.lists(st.sampled_from(EC2_EXTRA), max_size=3))
    turn = draw(st.integers(0, len(names)))  # the listing's order: a rotation will do
    listing = spoil.text("\n".join(names[turn:] + names[:turn]))
    # A listed key answering 404 now and then; an unlisted key's answer is ignored.
    lost = draw(st.integers(0, 3 * len(ec2_parse.WANTED)))
    raw: dict[str, str | None] = {
        key: None if i == lost else value for i, (key, value) in enumerate(values.items())
    }
    if draw(st.integers(0, 3)) == 0:
        raw["mac"] = spoil.text(mac)
    return Ec2Doc(draw(mac_spellings(mac)), listing, raw, draw(mac_spellings(primary)))


# --- OCI ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OciDoc:
    """parse_nic's arguments: the MAC asked for, the ``vnics/`` document."""

    mac: str
    text: str


def oci_vnic(draw: Draw, spoil: Spoiler, mac: str, bare_metal: bool) -> dict[str, Any]:
    net4, net6 = draw(subnets4()), draw(subnets6())
    ipv6_only = draw(st.integers(0, 4)) == 0
    entry: dict[str, Any] = {
        "vnicId": "ocid1.vnic.oc1." + id_text(draw, 60),
        "macAddr": draw(mac_spellings(mac)),
        "vlanTag": draw(st.integers(0, 4095)),
    }
    if ipv6_only:
        entry["subnetCidrBlock"] = draw(st.sampled_from(("<null>", "<null>", "", None, ABSENT)))
    else:
        entry["privateIp"] = str(host(draw, net4))
        entry["subnetCidrBlock"] = str(net4)
        entry["virtualRouterIp"] = str(first_host(net4))
    if ipv6_only or draw(st.booleans()):
        count = draw(st.integers(1 if ipv6_only else 0, 3))
        entry["ipv6Addresses"] = [str(host(draw, net6)) for _ in range(count)]
        entry["ipv6SubnetCidrBlock"] = str(net6)
        router = draw(st.sampled_from(("fe80::200:17ff:fe40:8972", str(first_host(net6)))))
        entry["ipv6VirtualRouterIp"] = router
    if bare_metal:
        entry["nicIndex"] = draw(st.integers(0, 3))
    entry = present({key: spoil.json(value) for key, value in entry.items()})
    if spoil.hit():
        entry[draw(st.text(max_size=8))] = draw(json_junk)
    if spoil.hit():
        entry["ipv6Addresses"] = many_lines(draw, 6).split("\n")
    return entry


@st.composite
def oci_documents(draw: Draw) -> OciDoc:
    count = draw(st.sampled_from((1, 2, 3, 1, 2, 4, 0)))
    found = draw(st.lists(macs, min_size=count, max_size=count, unique=True))
    bare_metal = draw(st.integers(0, 3)) == 0
    spoil = Spoiler(draw, count * 11 + 2)
    vnics: list[Any] = [oci_vnic(draw, spoil, mac, bare_metal) for mac in found]
    if len(vnics) > 1 and spoil.hit():  # the same VNIC twice
        vnics.append(vnics[0])
    if vnics and spoil.hit():
        vnics[draw(st.integers(0, len(vnics) - 1))] = draw(json_junk)
    if vnics and draw(st.integers(0, 49)) == 0:  # more VNICs than any shape attaches
        vnics = vnics * (300 // len(vnics) + 1)
    if found and draw(st.integers(0, 7)):
        asked = found[draw(st.integers(0, len(found) - 1))]
    else:
        asked = draw(macs)
    text = dumps(draw, vnics)
    if draw(st.integers(0, 9)) == 0:
        text = draw(garbage_documents(text))
    return OciDoc(draw(mac_spellings(asked)), text)


# --- OpenStack ----------------------------------------------------------------------------

LINK_TYPES = ("ovs", "ovs", "phy", "bridge", "tap", "vhostuser", "hw_veb", "vlan", "bond", None)
NETWORK_TYPES = (
    "ipv4",
    "ipv4",
    "ipv4",
    "ipv4_dhcp",
    "ipv6",
    "ipv6_slaac",
    "ipv6_dhcpv6-stateful",
    "ipv6_dhcpv6-stateless",
    "ipv6_dhcp",
)


@dataclass(frozen=True)
class OpenStackDoc:
    """parse_document's text, and build_observation's other arguments: the MAC asked for,
    the primary port's MAC, the port's local number, its DHCP lease."""

    mac: str
    text: str
    primary_mac: str | None
    number: int
    lease: Lease | None


def netmask(draw: Draw, net: Network) -> Any:
    """NET's mask as nova writes it (dotted, IPv6 mask form) or as a prefix length."""
    form = draw(st.integers(0, 2))
    return str(net.netmask) if form == 0 else net.prefixlen if form == 1 else str(net.prefixlen)


def openstack_route(draw: Draw, spoil: Spoiler, net: Network) -> dict[str, Any]:
    v6 = net.version == 6
    if draw(st.booleans()):  # the default route
        any_net = "::" if v6 else "0.0.0.0"
        mask = draw(st.sampled_from((any_net, 0, "0")))
        route = {"network": any_net, "netmask": mask, "gateway": str(first_host(net))}
    else:
        to = draw(subnets6() if v6 else subnets4())
        via = "fe80::1" if v6 and draw(st.integers(0, 3)) == 0 else str(host(draw, net))
        route = {"network": str(to.network_address), "netmask": netmask(draw, to), "gateway": via}
    return present({key: spoil.json(value) for key, value in route.items()})


def openstack_network(draw: Draw, spoil: Spoiler, link: str, index: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(NETWORK_TYPES))
    v6 = kind.startswith("ipv6")
    net = draw(subnets6() if v6 else subnets4())
    network: dict[str, Any] = {"id": f"network{index}", "type": kind, "link": link}
    if kind not in ("ipv4_dhcp", "ipv6_dhcp") or draw(st.integers(0, 5)) == 0:
        network["ip_address"] = str(host(draw, net))
        network["netmask"] = netmask(draw, net)
        routes = [openstack_route(draw, spoil, net) for _ in range(draw(st.integers(0, 3)))]
        network["routes"] = routes
    network["network_id"] = uuid_text(draw)
    network["services"] = [{"type": "dns", "address": "203.0.113.53"}]
    return present({key: spoil.json(value) for key, value in network.items()})


@st.composite
def openstack_documents(draw: Draw) -> OpenStackDoc:
    count = draw(st.sampled_from((1, 2, 3, 1, 2, 0)))
    found = draw(st.lists(macs, min_size=count, max_size=count, unique=True))
    spoil = Spoiler(draw, count * 14 + 6)
    links: list[Any] = []
    for i, mac in enumerate(found):
        link = {
            "id": f"tap{hex_text(draw, 8, 8)}-{i}",
            "vif_id": uuid_text(draw),
            "type": draw(st.sampled_from(LINK_TYPES)),
            "mtu": draw(st.sampled_from((1450, 1500, 9000, ABSENT)) | st.integers(68, 65535)),
            "ethernet_mac_address": draw(mac_spellings(mac)),
        }
        links.append(present({key: spoil.json(value) for key, value in link.items()}))
    if links and spoil.hit():  # a link twice (its id and MAC)
        links.append(links[0])
    ids = [link.get("id") for link in links if isinstance(link, dict)]
    networks: list[Any] = []
    for link_id in ids:
        for _ in range(draw(st.integers(0, 3))):
            target = link_id if isinstance(link_id, str) and draw(st.integers(0, 15)) else "tapx"
            networks.append(openstack_network(draw, spoil, target, len(networks)))
    if networks and spoil.hit():
        networks[draw(st.integers(0, len(networks) - 1))] = draw(json_junk)
    services = [{"type": "dns", "address": "203.0.113.53"}]
    document = present(
        {"links": spoil.json(links), "networks": spoil.json(networks), "services": services}
    )
    if spoil.hit():
        document[draw(st.text(max_size=8))] = draw(json_junk)
    text = dumps(draw, document)
    if draw(st.integers(0, 9)) == 0:
        text = draw(garbage_documents(text))
    asked = found[draw(st.integers(0, count - 1))] if found and draw(st.integers(0, 7)) else None
    asked = asked or draw(macs)
    primary = draw(st.sampled_from([*found, None]) | macs)
    return OpenStackDoc(
        draw(mac_spellings(asked)), text, primary, draw(st.integers(0, 99)), draw(leases())
    )


# --- CloudStack ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CloudStackDoc:
    """build_state's arguments: the NIC's MAC, the VR's answers (absent or None = 404),
    the NIC's DHCP lease, and what the source decided about the VR and the NIC."""

    mac: str
    raw: dict[str, str | None]
    lease: Lease | None
    vr: str
    own_vr: bool
    primary: bool
    device_number: int


@st.composite
def leases(
    draw: Draw, net: IPv4Network | None = None, address: IPv4Address | None = None
) -> Lease | None:
    """A NIC's DHCP lease as the lease readers give it (None: no lease); one in five read
    from a networkd lease file with hostile values."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return None
    net = net if net is not None else draw(subnets4())
    own = address if address is not None and draw(st.integers(0, 3)) else host(draw, net)
    router = first_host(net)
    if kind == 4:
        spoil = Spoiler(draw, 4)
        text = "\n".join(
            f"{key}={spoil.text(value)}"
            for key, value in (
                ("ADDRESS", str(own)),
                ("NETMASK", str(net.netmask)),
                ("ROUTER", str(router)),
                ("SERVER_ADDRESS", str(router)),
            )
        )
        return parse_networkd_lease(text, "eth1")
    assert isinstance(own, IPv4Address)
    return Lease(
        "eth1",
        draw(st.sampled_from(("networkd", "dhclient", "NetworkManager"))),
        None if own.is_unspecified or draw(st.integers(0, 7)) == 0 else own,
        draw(st.sampled_from((net.prefixlen, None)) | st.integers(0, 32)),
        draw(st.sampled_from((router, None, any_address(draw, 4)))),
        draw(st.sampled_from((router, None, any_address(draw, 4)))),
    )


@st.composite
def cloudstack_documents(draw: Draw) -> CloudStackDoc:
    net = draw(subnets4())
    address = host(draw, net)
    assert isinstance(address, IPv4Address)
    spoil = Spoiler(draw, 12)
    values = {
        "instance-id": draw(
            st.sampled_from(("0d4d6ae8-1b6c-4a3e-9a51-6f4f2b7c9e01", "i-2-34-VM"))
            | st.builds(str, st.integers(0, 2**40))
        ),
        "local-ipv4": str(address),
        "vm-id": uuid_text(draw),
        "local-hostname": "vm-1",
        "public-ipv4": str(any_address(draw, 4)),
        "public-hostname": draw(st.sampled_from(("vm-1.example", "203.0.113.10"))),
        "service-offering": "Small Instance",
        "availability-zone": "zone1",
        "cloud-identifier": "CloudStack-{7c3b0a52-5c44-4d9e-9c55-0f2d4a6e1b2c}",
        "hypervisor-host-name": "kvm-host-1",
    }
    # One key not answered (absent, 404 or an empty file) in about half the documents.
    missing = draw(st.integers(0, 2 * len(values)))
    how = draw(st.sampled_from(("absent", "404", "empty"))) if missing < len(values) else ""
    raw: dict[str, str | None] = {}
    for i, (key, value) in enumerate(values.items()):
        if i != missing:
            raw[key] = spoil.text(value)
        elif how != "absent":
            raw[key] = None if how == "404" else ""
    if spoil.hit():
        raw[draw(st.text(ID_CHARS, min_size=1, max_size=12))] = draw(hostile_text)
    return CloudStackDoc(
        mac=draw(mac_spellings(draw(macs))),
        raw=raw,
        lease=draw(leases(net, address)),
        vr="http://10.1.1.1",
        own_vr=draw(st.booleans()),
        primary=draw(st.booleans()),
        device_number=draw(st.integers(0, 99)),
    )


# --- Alibaba Cloud -------------------------------------------------------------------------


@dataclass(frozen=True)
class AliyunDoc:
    """aliyun_parse.parse_nic's arguments: the MAC, the ``macs/`` listing, the answers of
    its keys (None = 404), the instance's primary MAC."""

    mac: str
    listing: str
    raw: dict[str, str | None]
    primary_mac: str


def aliyun_list(draw: Draw, items: list[str]) -> str:
    """A list in either of the service's shapes: a JSON array, or brackets without quotes."""
    if draw(st.booleans()):
        return json.dumps(items, separators=(",", ":"))
    return "[" + ",".join(items) + "]"


@st.composite
def aliyun_documents(draw: Draw) -> AliyunDoc:
    mac = draw(macs)
    primary = mac if draw(st.booleans()) else draw(macs)
    net4, net6 = draw(subnets4()), draw(subnets6())
    spoil = Spoiler(draw, len(aliyun_parse.KEYS) + 3)
    private = [str(host(draw, net4)) for _ in range(draw(st.integers(1, 4)))]
    ipv6s = [str(host(draw, net6)) for _ in range(draw(st.integers(0, 3)))]
    values: dict[str, str | None] = {
        "network-interface-id": spoil.text("eni-bp1" + hex_text(draw, 4, 24)),
        "primary-ip-address": spoil.text(draw(st.sampled_from(private))),
        "private-ipv4s": spoil.text(aliyun_list(draw, private)),
        "vswitch-cidr-block": spoil.text(str(net4)),
        # The vSwitch's router is a host of its block (.253 on ECS), not always the first.
        "gateway": spoil.text(str(host(draw, net4))),
        "ipv6s": spoil.text(aliyun_list(draw, ipv6s)) if ipv6s or draw(st.booleans()) else None,
        "vswitch-ipv6-cidr-block": spoil.text(str(net6)) if draw(st.integers(0, 3)) else None,
        "ipv6-gateway": spoil.text(str(host(draw, net6))),
    }
    if spoil.hit():  # more entries than the parser allows
        key = draw(st.sampled_from(("private-ipv4s", "ipv6s")))
        values[key] = aliyun_list(draw, many_lines(draw, 4 if "4" in key else 6).split("\n"))
    lost = draw(st.integers(0, 3 * len(aliyun_parse.KEYS)))  # a key answering 404
    raw = {key: None if i == lost else value for i, (key, value) in enumerate(values.items())}
    others = draw(st.lists(macs, max_size=3))
    listed = [mac, primary, *others] if draw(st.integers(0, 7)) else [primary, *others]
    listing = spoil.text("\n".join(f"{m}/" for m in dict.fromkeys(listed)))
    return AliyunDoc(draw(mac_spellings(mac)), listing, raw, draw(mac_spellings(primary)))


# --- Azure --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AzureDoc:
    """azure_parse.parse_nic's arguments: the MAC asked for, the network document, the
    primary MAC and the device number the source would give the NIC."""

    mac: str
    text: str
    primary_mac: str | None
    number: int


def azure_host(draw: Draw, net: Network) -> str:
    """An address of NET, one just above it in about one draw of 32 (``host``'s rate, a
    quarter of it: an interface carries several addresses)."""
    address = host(draw, net)
    return str(address if address in net or not draw(st.integers(0, 3)) else first_host(net))


def azure_interface(draw: Draw, spoil: Spoiler, mac: str) -> dict[str, Any]:
    """An ``interface[]`` entry: every primitive a string, the MAC bare upper case."""
    net4, net6 = draw(subnets4()), draw(subnets6())
    if net4.prefixlen > 29 and draw(st.integers(0, 3)):  # Azure's subnets are /29 or larger
        net4 = net4.supernet(new_prefix=29)
    publics = ("", "104.46.124.81", str(host(draw, net4)))
    configs: list[Any] = [
        present(
            {
                "privateIpAddress": spoil.json(azure_host(draw, net4)),
                "publicIpAddress": spoil.json(draw(st.sampled_from(publics))),
            }
        )
        for _ in range(draw(st.integers(0 if draw(st.integers(0, 7)) == 0 else 1, 3)))
    ]
    if spoil.hit():  # more IP configurations than a NIC takes
        configs = [{"privateIpAddress": a} for a in many_lines(draw, 4).split("\n")]
    subnet = {"address": str(net4.network_address), "prefix": str(net4.prefixlen)}
    ipv4 = {
        "ipAddress": configs,
        "subnet": [present({k: spoil.json(v) for k, v in subnet.items()})],
    }
    ipv6: dict[str, Any] = {
        "ipAddress": [
            present({"privateIpAddress": spoil.json(azure_host(draw, net6))})
            for _ in range(draw(st.integers(0, 2)))
        ]
    }
    if draw(st.booleans()):
        ipv6["subnet"] = [{"address": str(net6.network_address), "prefix": str(net6.prefixlen)}]
    bare = mac.replace(":", "").upper()
    spelling = bare if draw(st.integers(0, 3)) else draw(mac_spellings(mac))
    entry = {"macAddress": spelling, "ipv4": ipv4, "ipv6": ipv6}
    entry = present({key: spoil.json(value) for key, value in entry.items()})
    if spoil.hit():
        entry[draw(st.text(max_size=8))] = draw(json_junk)
    return entry


@st.composite
def azure_documents(draw: Draw) -> AzureDoc:
    count = draw(st.sampled_from((1, 2, 3, 1, 2, 8, 0)))
    found = draw(st.lists(macs, min_size=count, max_size=count, unique=True))
    spoil = Spoiler(draw, count * 12 + 2)
    interfaces: list[Any] = [azure_interface(draw, spoil, mac) for mac in found]
    if len(interfaces) > 1 and spoil.hit():  # the same NIC twice
        interfaces.append(interfaces[0])
    if interfaces and spoil.hit():
        interfaces[draw(st.integers(0, len(interfaces) - 1))] = draw(json_junk)
    data: Any = {"interface": interfaces}
    if draw(st.integers(0, 15)) == 9:  # not the document's shape at all (a mid value:
        # hypothesis favours the bounds)
        data = draw(st.sampled_from(({}, {"interface": {}}, {"interface": None}, interfaces)))
    asked = draw(st.sampled_from(found)) if found and draw(st.integers(0, 7)) else draw(macs)
    primary = draw(st.sampled_from(found)) if found and draw(st.booleans()) else None
    text = dumps(draw, data)
    if draw(st.integers(0, 9)) == 0:
        text = draw(garbage_documents(text))
    return AzureDoc(draw(mac_spellings(asked)), text, primary, draw(st.integers(0, 99)))


# --- GCE ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GceDoc:
    """gce_parse.parse_nic's arguments: the MAC asked for, the network-interfaces document."""

    mac: str
    text: str


def gce_ranges(draw: Draw, net: Network, version: int) -> list[str]:
    """Alias, forwarded or target-instance ranges: addresses and networks, inside the NIC's
    subnet or anywhere."""
    out: list[str] = []
    for _ in range(draw(st.sampled_from((0, 0, 0, 0, 1, 2)))):
        anywhere = draw(st.integers(0, 3)) == 2
        where = draw(subnets6() if version == 6 else subnets4()) if anywhere else net
        if draw(st.booleans()):
            out.append(str(host(draw, where)))
        else:
            inner = inner_networks(draw, where, 1, 1, 28 if version == 4 else 96)
            out.append(str(inner[0] if inner else where))
    return out


def gce_nic(draw: Draw, spoil: Spoiler, mac: str) -> dict[str, Any]:
    net4, net6 = draw(subnets4()), draw(subnets6())
    if not 8 <= net4.prefixlen <= 29 and draw(st.integers(0, 3)):  # GCE's subnets: /8../29
        net4 = IPv4Network((net4.network_address, 24), strict=False)
    entry: dict[str, Any] = {
        "accessConfigs": [{"externalIp": "", "type": "ONE_TO_ONE_NAT"}],
        "dnsServers": ["169.254.169.254"],
        "mac": draw(mac_spellings(mac)),
        "mtu": draw(st.sampled_from((1460, 1460, 8244, 1500, 8896, 1300))),
        "network": "projects/" + hex_text(draw, 6, 12) + "/networks/" + id_text(draw, 20),
        "ipAliases": gce_ranges(draw, net4, 4),
        "forwardedIps": gce_ranges(draw, net4, 4),
        "targetInstanceIps": gce_ranges(draw, net4, 4),
    }
    if draw(st.integers(0, 5)) != 3:  # else an IPv6-only NIC (mid values: hypothesis
        entry["ip"] = str(host(draw, net4))  # favours the bounds)
        entry["subnetmask"] = str(net4.netmask)
        entry["gateway"] = str(first_host(net4))
    if draw(st.integers(0, 2)) == 1:
        entry["ipv6s"] = [str(host(draw, net6)) for _ in range(draw(st.integers(0, 2)))]
        entry["gatewayIpv6"] = draw(
            st.sampled_from(("fe80::4001:aff:fe84:1", str(first_host(net6))))
        )
        entry["forwardedIpv6s"] = gce_ranges(draw, net6, 6)
    entry = present({key: spoil.json(value) for key, value in entry.items()})
    if spoil.hit():
        entry[draw(st.text(max_size=8))] = draw(json_junk)
    if spoil.hit():
        entry["ipAliases"] = many_lines(draw, 4).split("\n")
    return entry


@st.composite
def gce_documents(draw: Draw) -> GceDoc:
    count = draw(st.sampled_from((1, 2, 3, 1, 2, 8, 0)))
    found = draw(st.lists(macs, min_size=count, max_size=count, unique=True))
    spoil = Spoiler(draw, count * 13 + 2)
    nics: list[Any] = [gce_nic(draw, spoil, mac) for mac in found]
    if len(nics) > 1 and spoil.hit():  # the same NIC twice
        nics.append(nics[0])
    if nics and spoil.hit():
        nics[draw(st.integers(0, len(nics) - 1))] = draw(json_junk)
    # Mid values: hypothesis favours the bounds.
    if nics and draw(st.integers(0, 49)) == 23:  # more NICs than any machine type has
        nics = nics * (40 // len(nics) + 1)
    asked = draw(st.sampled_from(found)) if found and draw(st.integers(0, 7)) else draw(macs)
    text = dumps(draw, nics)
    if draw(st.integers(0, 9)) == 7:
        text = draw(garbage_documents(text))
    return GceDoc(draw(mac_spellings(asked)), text)


#: cloud -> its document strategy.
DOCUMENTS: dict[str, st.SearchStrategy[Any]] = {
    "ec2": ec2_documents(),
    "oci": oci_documents(),
    "openstack": openstack_documents(),
    "cloudstack": cloudstack_documents(),
    "aliyun": aliyun_documents(),
    "azure": azure_documents(),
    "gce": gce_documents(),
}


# --- any NicState -------------------------------------------------------------------------


@st.composite
def static_routes(draw: Draw, version: int) -> StaticRoute:
    to = draw(subnets6() if version == 6 else subnets4())
    if to.prefixlen == 0:
        to = type(to)((to.network_address, 1), strict=False)
    return StaticRoute(to=to, via=any_address(draw, version))


def _not_default(network: IPv4Network | IPv6Network) -> bool:
    """NicState refuses a /0 local route (every address would be local)."""
    return network.prefixlen > 0


@st.composite
def nic_states(draw: Draw) -> NicState:
    """Any NicState the model accepts: every field over its whole range, addresses inside
    and outside their subnets, duplicates, both families, the model's longest lists."""
    net4 = draw(subnets4())
    nets6 = draw(st.lists(subnets6(), max_size=3))
    big = draw(st.integers(0, 19)) == 0
    count4 = draw(st.integers(0, 4)) if not big else draw(st.sampled_from((64, 256)))
    ipv4 = [host(draw, net4) for _ in range(count4)]
    count6 = draw(st.integers(0, 3)) if nets6 else 0
    ipv6 = [host(draw, draw(st.sampled_from(nets6))) for _ in range(count6)]
    if ipv4 and draw(st.integers(0, 5)) == 0:
        # A duplicate; at the model's longest list it replaces the last entry instead.
        ipv4[-1:] = [ipv4[-1], ipv4[0]] if len(ipv4) < 256 else [ipv4[0]]
    routes = draw(st.lists(static_routes(4) | static_routes(6), max_size=3))
    fields: dict[str, Any] = {
        "mac": draw(macs),
        "cloud": draw(
            st.sampled_from(("ec2", "oci", "openstack", "cloudstack"))
            | st.from_regex(r"[a-z][a-z0-9]{1,15}", fullmatch=True)
        ),
        "primary": draw(st.booleans()),
        "device_number": draw(st.none() | st.integers(0, 99)),
        "route_table": draw(st.integers(MIN_TABLE, MAX_TABLE)),
        "route_metric": draw(st.integers(1, 65535)),
        "interface_id": draw(st.none() | hostile_text),
        "ipv4_addresses": tuple(ipv4),
        "ipv4_subnet": draw(st.sampled_from((net4, None))),
        "ipv4_gateway": draw(st.sampled_from((None, first_host(net4), any_address(draw, 4)))),
        "ipv6_addresses": tuple(ipv6),
        "ipv6_subnets": tuple(nets6),
        "ipv6_gateway": draw(st.sampled_from((None, any_address(draw, 6)))),
        "mtu": draw(st.none() | st.integers(68, 65535)),
        "routes": tuple(routes),
        "ipv4_prefixes": tuple(inner_networks(draw, net4, 0, 2, 28)),
        "ipv6_prefixes": tuple(inner_networks(draw, nets6[0], 0, 2, 80)) if nets6 else (),
        "local_routes": tuple(
            draw(st.lists((subnets4() | subnets6()).filter(_not_default), max_size=3))
        ),
    }
    return NicState(**fields)


# --- a good document, and the same spoilt --------------------------------------------------

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def good_documents() -> dict[str, Any]:
    """One complete document per cloud, from the captured fixtures: the parser gives its
    MAC a state without a flag."""
    cap = json.loads((FIXTURES / "ec2" / "complete_eni.json").read_text())
    directory = f"{ec2_parse.MACS_DIR}{cap['mac']}/"
    answers: dict[str, str | None] = cap["answers"]
    raw = {
        path.removeprefix(directory): body
        for path, body in answers.items()
        if path.startswith(directory) and path != directory
    }
    oci = json.loads((FIXTURES / "oci" / "vm_dual_stack.json").read_text())
    openstack = (FIXTURES / "openstack" / "static_dual_stack.json").read_text()
    ali = json.loads((FIXTURES / "aliyun" / "secondary_dual_stack.json").read_text())
    azure = json.loads((FIXTURES / "azure" / "ipv6_subnet_secondaries.json").read_text())
    gce = json.loads((FIXTURES / "gce" / "forwarding.json").read_text())
    vr = json.loads((FIXTURES / "cloudstack" / "metadata" / "complete.json").read_text())
    router = IPv4Address("10.1.1.1")
    return {
        "ec2": Ec2Doc(cap["mac"], str(answers[directory]), raw, cap["primary_mac"]),
        "oci": OciDoc(oci["secondary"], json.dumps(oci["document"])),
        "openstack": OpenStackDoc("fa:16:3e:11:22:02", openstack, "fa:16:3e:11:22:01", 1, None),
        "cloudstack": CloudStackDoc(
            mac="52:54:00:00:01:02",
            raw={k: v for k, v in vr["answers"].items() if k != "meta-data/"},
            lease=Lease("eth1", "networkd", IPv4Address("10.1.1.23"), 24, router, router),
            vr="http://10.1.1.1",
            own_vr=True,
            primary=False,
            device_number=1,
        ),
        "aliyun": AliyunDoc(ali["mac"], ali["listing"], dict(ali["answers"]), ali["primary_mac"]),
        "azure": AzureDoc(azure["secondary"], json.dumps(azure["document"]), azure["primary"], 1),
        "gce": GceDoc(gce["secondary"], json.dumps(gce["document"])),
    }


GOOD = good_documents()


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))]
    return [path]


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replaced(value[path[0]], path[1:], new)
    return copy


@st.composite
def spoilt_documents(draw: Draw, cloud: str) -> Any:
    """CLOUD's good document (``GOOD``) with one hostile change: one value mutated or of
    another type, or (JSON) the whole text broken. Most are rejected, not all."""
    good = GOOD[cloud]
    if cloud in ("oci", "openstack", "azure", "gce"):
        if draw(st.integers(0, 3)) == 0:
            text = str(draw(garbage_documents(good.text)))
        else:
            data = json.loads(good.text)
            path = draw(st.sampled_from(_leaves(data)))
            old = data
            for key in path:
                old = old[key]
            new = draw(mutated(old)) if isinstance(old, str) else draw(json_junk)
            text = dumps(draw, _replaced(data, path, new))
        return replace(good, text=text)
    key = draw(st.sampled_from(sorted(k for k, v in good.raw.items() if v is not None)))
    raw = {**good.raw, key: draw(mutated(str(good.raw[key])))}
    return replace(good, raw=raw)
