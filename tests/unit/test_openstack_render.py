"""OpenStack port states through every renderer, against golden files.

The states come from the fixtures through the real parser. NICR_UPDATE_GOLDEN=1 rewrites
tests/golden/<renderer>/openstack-ports/ (a subdirectory: the
other renderer tests own the top level); the real consumers (netplan generate, libnm) check them
in tests/integration/test_openstack_golden.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nicreconciled.model import NicState
from nicreconciled.render.netplan import NetplanRenderer
from nicreconciled.render.networkd import NetworkdRenderer
from nicreconciled.render.networkmanager import NetworkManagerRenderer
from nicreconciled.sources.openstack_parse import build_observation, parse_document

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openstack"
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UPDATE_GOLDEN = os.environ.get("NICR_UPDATE_GOLDEN") == "1"
PRIMARY = "fa:16:3e:11:22:01"
RENDERERS = {
    "netplan": (NetplanRenderer(), ".yaml"),
    "networkd": (NetworkdRenderer(), ".network"),
    "networkmanager": (NetworkManagerRenderer(), ".nmconnection"),
}


def port(fixture: str, mac: str, number: int) -> NicState:
    raw = (FIXTURES / fixture).read_text()
    state = build_observation(mac, parse_document(raw), PRIMARY, number, raw).state
    assert state is not None
    return state


#: Golden stem -> state; numbers (tables 10040, 10041) distinct from every other golden
#: file's, since the integration tests load them all together.
CASES: dict[str, NicState] = {
    "openstack-static-dualstack-secondary": port("static_dual_stack.json", "fa:16:3e:11:22:02", 40),
    "openstack-dhcp-only": port("dhcp.json", "fa:16:3e:11:22:03", 41),
}


def golden_path(renderer: str, stem: str) -> Path:
    return GOLDEN / renderer / "openstack-ports" / f"{stem}{RENDERERS[renderer][1]}"


class TestGoldenFiles:
    @pytest.mark.parametrize("renderer", sorted(RENDERERS))
    @pytest.mark.parametrize("stem", sorted(CASES))
    def test_rendering_matches_the_golden_file(self, renderer: str, stem: str) -> None:
        text = RENDERERS[renderer][0].render(CASES[stem])
        path = golden_path(renderer, stem)
        if UPDATE_GOLDEN:
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"missing {path}; run with NICR_UPDATE_GOLDEN=1 to create it"
        assert text == path.read_text(encoding="utf-8")

    def test_every_openstack_golden_file_has_a_case(self) -> None:
        on_disk = {p.name.split(".")[0] for p in GOLDEN.glob("*/openstack-ports/*")}
        assert on_disk == set(CASES)


class TestWhatTheFilesSay:
    def test_the_static_port_gets_every_address_a_table_and_rules(self) -> None:
        text = RENDERERS["networkd"][0].render(CASES["openstack-static-dualstack-secondary"])
        for needle in ("10.0.11.20/24", "10.0.11.21/24", "2001:db8:11::10/64", "Table=10040"):
            assert needle in text

    def test_the_dhcp_port_gets_dhcp_and_no_rule(self) -> None:
        text = RENDERERS["networkd"][0].render(CASES["openstack-dhcp-only"])
        assert "RoutingPolicyRule" not in text
        assert "DHCP=" in text
