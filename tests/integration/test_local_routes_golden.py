"""The real consumers read the local-route golden files (tests/golden/*/local-routes/).

``netplan generate --root-dir`` turns every netplan file into what networkd or NetworkManager
is given: a ``[Route]`` of type local in table 255 per local route (networkd backend), and the
passthrough's keyfile routes after netplan's own (NetworkManager backend). libnm reads our
keyfiles and netplan's: every local route with exactly the attributes we wrote (libnm drops
an attribute it does not know without a warning, so "it loaded" would prove little). The
networkd files are read by the real systemd-networkd in
``tests/integration/lab/test_networkd_renderer.py`` (every golden file, subfolders too) and
installed in the kernel by ``tests/integration/lab/test_local_routes.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from nicreconciled.model import NicState
from tests.integration.conftest import check
from tests.integration.test_netplan_generate import sections
from tests.unit.local_route_states import CASES, golden_path
from tests.unit.test_render_netplan import LOCAL_GOLDEN

pytestmark = pytest.mark.integration

#: What libnm parses from our options: IPv4 with its scope, IPv6 without (libnm has none).
ATTRIBUTES = {4: {"scope": 254, "table": 255, "type": "local"}, 6: {"table": 255, "type": "local"}}


@pytest.fixture(scope="module")
def netplan() -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which("netplan", path=search)
    if found is None:
        pytest.fail("netplan not found: install the Debian package netplan.io", pytrace=False)
    return found


def local_routes(routes: list[dict[str, object]]) -> list[tuple[str, int, dict[str, object]]]:
    """(destination/prefix, family, attributes) of libnm's parsed routes of type local."""
    return [
        (f"{r['dest']}/{r['prefix']}", 6 if ":" in str(r["dest"]) else 4, r["attributes"])
        for r in routes
        if isinstance(r["attributes"], dict) and r["attributes"].get("type") == "local"
    ]


def expected(state: NicState) -> list[tuple[str, int, dict[str, object]]]:
    return [(str(n), n.version, ATTRIBUTES[n.version]) for n in state.local_routes]


def test_netplan_generates_every_local_route_golden_file(
    netplan: str, libnm: str, tmp_path: Path
) -> None:
    conf = tmp_path / "etc" / "netplan"
    conf.mkdir(parents=True)
    for stem, (_renderer, state) in LOCAL_GOLDEN.items():
        path = conf / f"90-nicreconciled-{state.key}.yaml"
        path.write_text(golden_path("netplan", stem, ".yaml").read_text(encoding="utf-8"))
        path.chmod(0o600)
    done = subprocess.run(
        [netplan, "generate", "--root-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    keyfiles = []
    for stem, (renderer, state) in sorted(LOCAL_GOLDEN.items()):
        if renderer.backend == "networkd":
            (network,) = (tmp_path / "run" / "systemd" / "network").glob(
                f"*-netplan-nicr-{state.key}.network"
            )
            local = [
                {k: v[0] for k, v in body.items()}
                for name, body in sections(network)
                if name == "Route" and body.get("Type") == ["local"]
            ]
            # netplan defaults a local route's scope to host, and writes it for IPv6 too
            # (networkd ignores it there, with a warning, as for the IPv6 subnet route).
            assert local == [
                {"Destination": str(n), "Scope": "host", "Type": "local", "Table": "255"}
                for n in state.local_routes
            ], stem
            continue
        (keyfile,) = (tmp_path / "run" / "NetworkManager" / "system-connections").glob(
            f"netplan-nicr-{state.key}.nmconnection"
        )
        # netplan 0.106 writes no uuid= (NetworkManager derives one from the path when it
        # loads the file); libnm's verify() wants one: the copy checked gets one.
        copy = tmp_path / f"{stem}.nmconnection"
        text = keyfile.read_text(encoding="utf-8")
        if "\nuuid=" not in text:
            made_up = uuid.uuid5(uuid.NAMESPACE_URL, state.mac)
            text = text.replace("[connection]\n", f"[connection]\nuuid={made_up}\n")
        copy.write_text(text, encoding="utf-8")
        copy.chmod(0o600)
        keyfiles.append((copy, state))
    assert len(keyfiles) == 2
    results = check(libnm, [path for path, _ in keyfiles])
    for (path, state), result in zip(keyfiles, results, strict=True):
        assert result["ok"], result
        assert result["warnings"] == [] == result["unknown_keys"]
        parsed = local_routes(result["ipv4"]["routes"]) + local_routes(result["ipv6"]["routes"])
        assert parsed == expected(state), path.name


def test_libnm_reads_every_local_route_keyfile(libnm: str, tmp_path: Path) -> None:
    paths = []
    for stem in sorted(CASES):
        path = tmp_path / f"{stem}.nmconnection"
        path.write_text(golden_path("networkmanager", stem, ".nmconnection").read_text())
        path.chmod(0o600)
        paths.append(path)
    for stem, result in zip(sorted(CASES), check(libnm, paths), strict=True):
        state = CASES[stem]
        assert result["ok"], result
        assert result["error"] is None
        assert result["warnings"] == [] == result["unknown_keys"]
        parsed = local_routes(result["ipv4"]["routes"]) + local_routes(result["ipv6"]["routes"])
        assert parsed == expected(state), stem
        ipv6 = any(n.version == 6 for n in state.local_routes)
        if ipv6 and not state.ipv6_addresses and not state.primary:
            assert result["ipv6"]["method"] == "link-local", stem
