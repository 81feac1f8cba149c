"""The metrics as a fleet's Prometheus gets them: the daemon's textfile served by the real
node_exporter (Debian's prometheus-node-exporter, run inside the lab's instance namespace on
its loopback) and scraped over HTTP, on both managers.

An ENI is hot-plugged while the manager's tool fails (a stand-in, as in the fault tests):
the scrape shows the failed applies and the NIC failing. The stand-in is removed: the retry
loads the file, the scrape shows the NIC converged, the convergence observed and the last
convergence's time. Then another program deletes the ENI's rules: the scrape shows the drift
and the heal. node_exporter reports no error reading the file, and its mtime is the file's.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nicreconciled.lab import Eni, Lab, missing_state
from tests.conftest import require_tool
from tests.integration.lab.conftest import LabStack, record_timing

pytestmark = pytest.mark.integration

PORT = 9100
#: The manager's tool the first apply runs (its failure is the failing apply).
TOOL = {"networkd": "networkctl", "nm": "nmcli"}
SCRAPE = (
    "import sys, urllib.request; "
    f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{PORT}/metrics', timeout=5)"
    ".read().decode())"
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(lab: Lab) -> Samples:
    """GET /metrics from inside the instance (node_exporter listens on its loopback)."""
    text = lab.run([sys.executable, "-c", SCRAPE]).stdout
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def start_node_exporter(lab: Lab, directory: Path) -> None:
    exporter = require_tool("prometheus-node-exporter")
    argv = [
        exporter,
        f"--web.listen-address=127.0.0.1:{PORT}",
        "--collector.disable-defaults",
        "--collector.textfile",
        f"--collector.textfile.directory={directory}",
    ]
    lab.procs.spawn(
        "node-exporter", [*lab.enter_instance(), *argv], log=lab.workdir / "node-exporter.log"
    )

    def up() -> bool:
        return lab.run([sys.executable, "-c", SCRAPE], check=False).returncode == 0

    lab.wait_for(up, 20, "node_exporter answering on 127.0.0.1:9100")


def wait_scraped(
    lab: Lab, what: str, ok: Callable[[Samples], bool], timeout: float = 30
) -> Samples:
    last: list[Samples] = [{}]

    def seen() -> Samples | None:
        last[0] = scrape(lab)
        return last[0] if ok(last[0]) else None

    found: Samples = lab.wait_for(
        seen,
        timeout,
        what,
        describe=lambda: "\n".join(
            f"{name}{dict(labels)} {value}"
            for (name, labels), value in sorted(last[0].items())
            if name.startswith(("nicreconciled_", "node_textfile"))
        ),
    )
    return found


def test_node_exporter_serves_a_failing_apply_a_convergence_and_a_heal(stack: LabStack) -> None:
    lab = stack.lab
    directory = lab.workdir / "node-exporter"
    directory.mkdir()
    prom = directory / "nicreconciled.prom"
    start_node_exporter(lab, directory)
    tool = TOOL[lab.manager]
    daemon = lab.start_daemon(failing=(tool,), metrics=str(prom))
    eni = Eni.plan(3)
    stack.attach(eni)

    failing = wait_scraped(
        lab,
        f"the failed apply ({tool} fails) in the scrape",
        lambda s: (
            (get(s, "nicreconciled_applies_total", result="failed") or 0) >= 1
            and get(s, "nicreconciled_nics", phase="failing") == 1
        ),
    )
    assert get(failing, "nicreconciled_applies_total", result="ok") == 0
    assert get(failing, "nicreconciled_convergence_seconds_count") == 0
    assert get(failing, "nicreconciled_info", version=daemon_version(), cloud="ec2",
               renderer=lab.renderer) == 1  # fmt: skip
    assert get(failing, "node_textfile_scrape_error") == 0
    # node_exporter 1.5 gives whole seconds (and the file may have been written since).
    mtime = get(failing, "node_textfile_mtime_seconds", file=str(prom))
    assert mtime == pytest.approx(prom.stat().st_mtime, abs=1.5)

    fixed = time.monotonic()
    (daemon.bin_dir / tool).unlink()  # the real tool from now on
    done = wait_scraped(
        lab,
        "the NIC converged in the scrape",
        lambda s: (
            get(s, "nicreconciled_nics", phase="converged") == 1
            and get(s, "nicreconciled_nics", phase="failing") == 0
            and (get(s, "nicreconciled_convergence_seconds_count") or 0) >= 1
        ),
    )
    took = time.monotonic() - fixed
    assert not missing_state(lab, eni)
    assert (get(done, "nicreconciled_applies_total", result="ok") or 0) >= 1
    assert (get(done, "nicreconciled_metadata_requests_total", outcome="ok") or 0) > 0
    assert get(done, "nicreconciled_metadata_requests_total", outcome="timeout") == 0
    assert (get(done, "nicreconciled_last_converged_timestamp_seconds") or 0) > time.time() - 120
    # From the hot-plug, through the failing applies, to complete in the kernel.
    assert (get(done, "nicreconciled_convergence_seconds_sum") or 0) > 0

    for address in eni.ipv4s:
        lab.run(["ip", "rule", "del", "from", address, "table", str(eni.table)])
    healed = wait_scraped(
        lab,
        "the drift and the heal in the scrape",
        lambda s: (
            (get(s, "nicreconciled_kernel_heals_total") or 0) >= 1
            and (get(s, "nicreconciled_drift_detected_total") or 0) >= 1
        ),
    )
    stack.wait_complete(eni)
    assert get(healed, "node_textfile_scrape_error") == 0
    record_timing(
        f"[{lab.manager}] metrics: failing apply, then converged {took:.2f} s after the fix, "
        "then a heal, each seen through node_exporter"
    )


def daemon_version() -> str:
    from nicreconciled import __version__

    return __version__
