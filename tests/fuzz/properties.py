"""The fuzzed properties as plain functions: the tests and ``bench/fuzz.py`` run the same code.

* ``parse``: a cloud's parser on one drawn document, called as its source calls it.
* ``parser_property``: the parser returns an Observation (its state, or None) or raises
  MetadataError, a one-line message; nothing else escapes (no TypeError, KeyError,
  ValueError, RecursionError). An accepted state is the cloud's, of the MAC asked for, passes
  the model's validation again, holds nothing a consumer would misread (``assert_writable``),
  and parsing is pure (the same document, the same answer).
* ``render_property``: every renderer renders a validated NicState, twice identically (and
  identically for an equal copy), and the text means what the renderer built: the YAML
  loads back to the same document, the unit file and the key file read back to the same
  sections, one line per key. A renderer's writer refusing a value (ValueError) of a
  validated state is a defect like any other exception.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from nicreconciled import fingerprint
from nicreconciled.errors import MetadataError
from nicreconciled.model import NicState, Observation, normalize_mac
from nicreconciled.render import networkd, networkmanager
from nicreconciled.render.netplan import NetplanRenderer
from nicreconciled.render.networkd import NetworkdRenderer
from nicreconciled.render.networkmanager import NetworkManagerRenderer
from nicreconciled.sources import (
    aliyun_parse,
    azure_parse,
    cloudstack_parse,
    ec2_parse,
    gce_parse,
    oci,
    openstack_parse,
)
from tests.fuzz.strategies import (
    AliyunDoc,
    AzureDoc,
    CloudStackDoc,
    Ec2Doc,
    GceDoc,
    OciDoc,
    OpenStackDoc,
)

CLOUDS = ("ec2", "oci", "openstack", "cloudstack", "aliyun", "azure", "gce")


def _ec2(doc: Ec2Doc) -> Observation:
    return ec2_parse.parse_nic(doc.mac, doc.listing, doc.raw, doc.primary_mac)


def _oci(doc: OciDoc) -> Observation:
    return oci.parse_nic(doc.mac, doc.text)


def _openstack(doc: OpenStackDoc) -> Observation:
    document = openstack_parse.parse_document(doc.text)
    return openstack_parse.build_observation(
        doc.mac, document, doc.primary_mac, doc.number, doc.text, doc.lease
    )


def _cloudstack(doc: CloudStackDoc) -> Observation:
    return cloudstack_parse.build_state(
        doc.mac,
        doc.raw,
        doc.lease,
        vr=doc.vr,
        own_vr=doc.own_vr,
        primary=doc.primary,
        device_number=doc.device_number,
    )


def _aliyun(doc: AliyunDoc) -> Observation:
    return aliyun_parse.parse_nic(doc.mac, doc.listing, doc.raw, doc.primary_mac)


def _azure(doc: AzureDoc) -> Observation:
    return azure_parse.parse_nic(doc.mac, doc.text, primary_mac=doc.primary_mac, number=doc.number)


def _gce(doc: GceDoc) -> Observation:
    return gce_parse.parse_nic(doc.mac, doc.text)


PARSERS: dict[str, Callable[[Any], Observation]] = {
    "ec2": _ec2,
    "oci": _oci,
    "openstack": _openstack,
    "cloudstack": _cloudstack,
    "aliyun": _aliyun,
    "azure": _azure,
    "gce": _gce,
}


def parse(cloud: str, doc: Any) -> Observation:
    """CLOUD's parser on DOC; MetadataError and anything else pass through."""
    return PARSERS[cloud](doc)


def parser_property(cloud: str, doc: Any) -> NicState | MetadataError | None:
    """The state CLOUD's parser accepts from DOC, None (an Observation without a state), or
    the MetadataError it raised; AssertionError when a property fails, and any other
    exception of the parser passes through (that is the defect)."""
    try:
        observation = parse(cloud, doc)
    except MetadataError as exc:
        message = str(exc)
        assert message, "MetadataError without a message"
        assert not {"\n", "\r"} & set(message), f"not one line: {message!r}"
        return exc
    assert isinstance(observation, Observation), type(observation)
    assert observation.mac == normalize_mac(doc.mac)
    assert parse(cloud, doc) == observation, "the same document gave another answer"
    state = observation.state
    if state is None:
        return None
    assert isinstance(state, NicState), type(state)
    assert state.cloud == cloud, state.cloud
    assert state.mac == observation.mac, (state.mac, observation.mac)
    again = NicState.model_validate(state.model_dump())
    assert again == state, "the state does not survive the model's validation"
    assert fingerprint.fingerprint(again) == fingerprint.fingerprint(state)
    assert_writable(state)
    return state


def assert_writable(state: NicState) -> None:
    """What the model lets through but no consumer takes as meant (each found by this
    fuzzing, through a renderer's writer or a real consumer): an IPv6 zone ("%eth0": the
    networkd and NetworkManager writers refuse it, netplan generate too), the unspecified
    address as the NIC's (networkd reads ``Address=0.0.0.0/24`` as "any free /24 of its
    pool"), a /0 subnet or prefix (netplan refuses an address with /0; a rule from /0 would
    take all of the host's traffic)."""
    networks = [state.ipv4_subnet, *state.ipv6_subnets, *state.ipv4_prefixes]
    networks += [*state.ipv6_prefixes, *(route.to for route in state.routes)]
    addresses = [*state.ipv4_addresses, *state.ipv6_addresses]
    routers = [state.ipv4_gateway, state.ipv6_gateway, *(route.via for route in state.routes)]
    for value in (*networks, *addresses, *routers):
        assert value is None or "%" not in str(value), f"an IPv6 zone: {value}"
    for address in addresses:
        assert not address.is_unspecified, f"the unspecified address {address} as the NIC's"
    for network in networks:
        assert network is None or network.prefixlen > 0, f"{network}: every address"


#: name -> renderer, every renderer and every variant of its output.
RENDERERS: dict[str, Any] = {
    "netplan": NetplanRenderer(),
    "netplan-ra-table": NetplanRenderer(ra_table=True),
    "netplan-nm": NetplanRenderer("NetworkManager"),
    "networkd": NetworkdRenderer(),
    "networkmanager": NetworkManagerRenderer(),
}


def _sections(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """A systemd unit or GLib key file as written: (section, [(key, value)]) in order. Every
    line must be a comment (only the first), blank, ``[name]`` or ``key=value``."""
    out: list[tuple[str, list[tuple[str, str]]]] = []
    lines = text.split("\n")
    assert lines[0].startswith("# Written by nicreconciled"), lines[0]
    assert lines[-1] == "", "no final newline"
    for line in lines[1:-1]:
        if not line:
            continue
        if line.startswith("["):
            assert line.endswith("]"), line
            assert line.count("[") == 1, line
            out.append((line[1:-1], []))
            continue
        key, sep, value = line.partition("=")
        assert all((sep, out, key)), line
        assert not {"#", ";"} & set(line), line
        out[-1][1].append((key, value))
    return out


def render_property(state: NicState) -> dict[str, str]:
    """RENDERERS' texts of STATE; AssertionError (or the renderer's exception) if any
    property fails."""
    copy = NicState.model_validate(state.model_dump())
    out: dict[str, str] = {}
    for name, renderer in RENDERERS.items():
        text = renderer.render(state)
        assert isinstance(text, str)
        assert renderer.render(state) == text, f"{name}: two renders differ"
        assert renderer.render(copy) == text, f"{name}: an equal state renders differently"
        out[name] = text
        if name.startswith("netplan"):
            header, _, body = text.partition("\n")
            expected_header = (
                f"# Written by nicreconciled for {state.mac}; do not edit (rewritten on change)."
            )
            assert header == expected_header, header
            loaded = yaml.safe_load(body)
            built = {
                "network": {
                    "version": 2,
                    "ethernets": {f"nicr-{state.key}": renderer._ethernet(state)},
                }
            }
            assert loaded == built, f"{name}: the YAML reads back as something else"
        elif name == "networkd":
            assert _sections(text) == networkd.network(state), f"{name}: reads back differently"
        else:
            expected = list(networkmanager.keyfile(state).items())
            assert _sections(text) == expected, f"{name}: reads back differently"
    return out
