"""Every renderer on fuzzed states, and the real consumers on a sample of them.

* Any state a parser accepts from a hostile document, and any NicState the model accepts,
  renders with every renderer, deterministically, as text that reads back as what the
  renderer built (``properties.render_property``).
* A sample of parser-accepted states (``SAMPLE_PER_CLOUD`` of each cloud, picked for
  variety, each given a MAC and a route table of its own) is handed to the real consumers in
  batches: one ``netplan generate`` per backend for all of them (no error, no warning), one
  libnm read and verify (``tests/tools/nm_keyfile_check.py``: no warning, no unknown key)
  for all of them, and the real systemd-networkd of a network lab, which reads them all on
  one ``networkctl reload`` and names in its log every line it does not take as written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from nicreconciled.lab import Lab, missing_tools
from nicreconciled.model import NicState
from nicreconciled.render.netplan import NetplanRenderer
from nicreconciled.render.networkd import NetworkdRenderer
from nicreconciled.render.networkmanager import NetworkManagerRenderer
from nicreconciled.system.netplan import supports_ra_table
from tests.conftest import require_tool
from tests.fuzz.properties import CLOUDS, parser_property, render_property
from tests.fuzz.settings import RENDER_EXAMPLES, SEED, STATE_EXAMPLES, fuzz_settings
from tests.fuzz.strategies import DOCUMENTS, nic_states
from tests.integration.conftest import NM_CHECK_TOOL, SYSTEM_PYTHON

#: States of each cloud handed to the real consumers, and the documents drawn to find them.
SAMPLE_PER_CLOUD = 20
SAMPLE_DOCUMENTS = 200


@pytest.mark.parametrize("cloud", CLOUDS)
@seed(SEED)
@fuzz_settings(RENDER_EXAMPLES)
@given(data=st.data())
def test_an_accepted_state_renders_deterministically_and_reads_back(
    cloud: str, data: st.DataObject
) -> None:
    state = parser_property(cloud, data.draw(DOCUMENTS[cloud], label="document"))
    if isinstance(state, NicState):
        render_property(state)


@seed(SEED)
@fuzz_settings(STATE_EXAMPLES)
@given(state=nic_states())
def test_any_valid_state_renders_deterministically_and_reads_back(state: NicState) -> None:
    render_property(state)


# --- the real consumers, on a sample ------------------------------------------------------


def signature(state: NicState) -> tuple[object, ...]:
    """What makes two states render differently in kind, not just in value."""
    return (
        state.primary,
        state.ipv6_only,
        len(state.ipv4_addresses) > 1,
        bool(state.ipv6_addresses),
        state.ipv4_gateway is not None,
        state.ipv6_gateway is not None,
        bool(state.routes),
        state.mtu is not None,
        bool(state.ipv4_prefixes or state.ipv6_prefixes),
        bool(state.ipv6_subnets),
    )


def varied(states: list[NicState], count: int) -> list[NicState]:
    """COUNT of STATES, one of each signature in turn (the first drawn of each first)."""
    groups: dict[tuple[object, ...], list[NicState]] = {}
    for state in states:
        groups.setdefault(signature(state), []).append(state)
    out: list[NicState] = []
    while len(out) < count and any(groups.values()):
        for key in sorted(groups, key=repr):
            if groups[key] and len(out) < count:
                out.append(groups[key].pop(0))
    return out


def accepted_states(cloud: str) -> list[NicState]:
    found: list[NicState] = []

    @seed(SEED)
    @settings(
        max_examples=SAMPLE_DOCUMENTS,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(doc=DOCUMENTS[cloud])
    def collect(doc: object) -> None:
        state = parser_property(cloud, doc)
        if isinstance(state, NicState):
            found.append(state)

    collect()
    return varied(found, SAMPLE_PER_CLOUD)


@pytest.fixture(scope="module")
def sample() -> list[NicState]:
    """Parser-accepted states of every cloud, each with a MAC and a route table of its own:
    the consumers read them side by side as the NICs of one machine, and states drawn from
    unrelated documents would otherwise share tables (netplan refuses two default routes
    in one table) and file names (a file is named by its MAC)."""
    states = [state for cloud in CLOUDS for state in accepted_states(cloud)]
    assert len(states) >= 2 * len(CLOUDS), "too few accepted states to sample"
    return [
        state.model_copy(
            update={
                "mac": f"0a:f0:00:00:{i >> 8:02x}:{i & 0xFF:02x}",
                "route_table": 20000 + i,
                "route_metric": 20512 + i,
            }
        )
        for i, state in enumerate(states)
    ]


def install(directory: Path, files: dict[str, str], mode: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        path.chmod(mode)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def netplan() -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which("netplan", path=search)
    if found is None:
        pytest.fail("netplan not found: install the Debian package netplan.io", pytrace=False)
    return found


def netplan_generate(netplan: str, root: Path, files: dict[str, str]) -> str | None:
    """None when netplan generates FILES without an error or a warning, else its stderr."""
    install(root / "etc" / "netplan", files, 0o600)
    done = subprocess.run(
        [netplan, "generate", "--root-dir", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode == 0 and "WARNING" not in done.stderr and "too open" not in done.stderr:
        return None
    return f"exit {done.returncode}: {done.stderr.strip()}"


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["networkd", "NetworkManager"])
def test_netplan_generate_accepts_every_sampled_state(
    sample: list[NicState], netplan: str, backend: str, tmp_path: Path
) -> None:
    variants = [NetplanRenderer(backend)]  # type: ignore[arg-type]
    if backend == "networkd" and supports_ra_table(netplan):
        variants.append(NetplanRenderer(backend, ra_table=True))  # type: ignore[arg-type]
    for n, renderer in enumerate(variants):
        files = {renderer.filename(s.mac): renderer.render(s) for s in sample}
        problem = netplan_generate(netplan, tmp_path / f"all-{n}", files)
        if problem is None:
            generated = tmp_path / f"all-{n}" / "run"
            found = "\n".join(str(p) for p in generated.rglob("*nicr-*"))
            missing = [s.mac for s in sample if s.key not in found]
            assert not missing, f"netplan wrote nothing for {missing}"
            continue
        # Name the files netplan refuses, one root each.
        refused = {}
        for name, text in files.items():
            alone = netplan_generate(netplan, tmp_path / f"one-{n}-{name}", {name: text})
            if alone is not None:
                refused[name] = f"{alone}\n{text}"
        pytest.fail(f"netplan refused the batch ({problem[:2000]}); alone: {refused}")


@pytest.mark.integration
def test_libnm_reads_and_verifies_every_sampled_state(
    sample: list[NicState], tmp_path: Path
) -> None:
    renderer = NetworkManagerRenderer()
    files = {renderer.filename(s.mac): renderer.render(s) for s in sample}
    paths = install(tmp_path, files, 0o600)
    done = subprocess.run(
        [SYSTEM_PYTHON, str(NM_CHECK_TOOL), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr  # 2: libnm missing (the message says what)
    results = json.loads(done.stdout)
    assert [r["file"] for r in results] == [str(p) for p in paths]
    bad = {
        Path(r["file"]).name: {k: r[k] for k in ("error", "warnings", "unknown_keys") if r.get(k)}
        for r in results
        if not r["ok"]
    }
    assert not bad, {name: (why, files[name]) for name, why in bad.items()}
    for state, result in zip(sample, results, strict=True):
        assert result["mac"] == state.mac.upper()
        assert result["uuid"]
        assert result["id"] == f"nicreconciled-{state.key}"


@pytest.fixture(scope="module")
def networkd_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("the networkd check needs root (network and mount namespaces)", pytrace=False)
    for tool in missing_tools("networkd"):
        require_tool(tool)
    with Lab("networkd", tmp_path_factory.mktemp("lab"), tag="fz") as lab:
        yield lab


@pytest.mark.integration
def test_networkd_reads_every_sampled_state_without_a_complaint(
    sample: list[NicState], networkd_lab: Lab
) -> None:
    """networkd's own parser, after a positive control: a file with an unknown key and a
    bad address is named in its log by file and line."""
    lab = networkd_lab
    renderer = NetworkdRenderer()
    files = {renderer.filename(s.mac): renderer.render(s) for s in sample}
    control = "03-nicr-fuzz-control.network"
    files[control] = "[Match]\nName=nomatch\n[Network]\nFoo=1\nAddress=bad\n"
    directory = lab.path("/run/systemd/network")
    install(directory, files, renderer.mode)
    log = lab.workdir / "networkd.log"
    try:
        lab.run(["networkctl", "reload"])

        def read_all() -> bool:
            text = log.read_text(errors="replace")
            return all(f"Found new .network file: /run/systemd/network/{n}" in text for n in files)

        lab.wait_for(read_all, 30, "networkd to read every sampled file")
        lines = log.read_text(errors="replace").splitlines()
        complaints = [line for line in lines if f"/run/systemd/network/{control}:" in line]
        assert any("Unknown key 'Foo'" in line for line in complaints), complaints
        for name, text in files.items():
            if name != control:
                said = [line for line in lines if f"/run/systemd/network/{name}:" in line]
                assert said == [], f"networkd complained about {name}: {said}\n{text}"
    finally:
        for name in files:
            (directory / name).unlink(missing_ok=True)
        lab.run(["networkctl", "reload"])
